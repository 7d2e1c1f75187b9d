using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Kv;

/// <summary>
/// Causal grouped-query attention over a paged KV cache. <see cref="Append"/> stores each token's rotated key and
/// value in its block slot; <see cref="Attend"/> then computes the attention of every query head. Work is split over
/// (query block, KV head) pairs: a query block is up to <see cref="QueryBlock"/> consecutive tokens of one sequence,
/// so each K/V block is read and widened once for all of them and for every query head of the group. Each (token,
/// head) is computed in the same order whatever its block, so results do not depend on how tokens are batched.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class PagedAttention : IParallelWork, IDisposable
{
    /// <summary>Most consecutive tokens of one sequence attended together.</summary>
    public const int QueryBlock = 8;

    private readonly KvBlockPool _pool;
    private readonly HeadKernels _kernels;
    private readonly RotaryEmbedding _rope;
    private readonly WorkerPool _workers;
    private readonly int _headCount, _group, _headDim, _maxContext;
    private readonly NativeBuffer<float>[] _scores;
    private readonly float _scale;
    private readonly (int First, int Count)[] _queryBlocks;

    private NativeBuffer<float>[]? _mass;  // per worker: attention received by each key position, while accumulating
    private bool _accumulating;
    private AttentionBatch? _batch;
    private int _layer, _queryBlockCount;
    private float* _q, _out, _cos, _sin;

    /// <summary>
    /// Creates the kernel for <paramref name="headCount"/> query heads over <paramref name="pool"/>, for steps of at most
    /// <paramref name="maxTokens"/> tokens; <paramref name="rope"/> realigns queries against packet blocks;
    /// <paramref name="kernels"/> are the inner loops (generic for the pool's head dim when null).
    /// </summary>
    public PagedAttention(KvBlockPool pool, WorkerPool workers, RotaryEmbedding rope, int headCount, int maxContext, int maxTokens, HeadKernels? kernels = null)
    {
        _kernels = kernels ?? new GenericHeadKernels(pool.Layout.HeadDim);
        if (_kernels.HeadDim != pool.Layout.HeadDim) throw new ArgumentException($"Head kernels for head dim {_kernels.HeadDim} cannot serve head dim {pool.Layout.HeadDim}.", nameof(kernels));
        _rope = rope;
        _pool = pool;
        _workers = workers;
        _headCount = headCount;
        _headDim = pool.Layout.HeadDim;
        _group = headCount / pool.Layout.KvHeadCount;
        // No sequence can outgrow the pool, so score rows need not be longer than its capacity.
        _maxContext = Math.Min(maxContext, pool.BlockCount * pool.Layout.BlockSize);
        _scale = 1f / MathF.Sqrt(_headDim);
        _queryBlocks = new (int, int)[maxTokens];
        _scores = new NativeBuffer<float>[workers.ThreadCount];
        for (int i = 0; i < _scores.Length; i++)
            _scores[i] = new NativeBuffer<float>((long)QueryBlock * _group * _maxContext + (long)pool.Layout.BlockSize * _headDim
                                                 + (long)QueryBlock * _group * _headDim + _headDim);
    }

    /// <summary>
    /// Starts summing, for every key position, the attention probability it receives (over query heads, queries and
    /// layers): how much a packet's tokens are used while it is built, which decides what token pruning keeps.
    /// </summary>
    public void BeginAttentionMass()
    {
        _mass ??= _scores.Select(_ => new NativeBuffer<float>(_maxContext)).ToArray();
        foreach (var buffer in _mass) buffer.Span.Clear();
        _accumulating = true;
    }

    /// <summary>Stops summing and writes the mass of positions [0, destination.Length) into <paramref name="destination"/>.</summary>
    public void EndAttentionMass(Span<float> destination)
    {
        _accumulating = false;
        destination.Clear();
        foreach (var buffer in _mass!) System.Numerics.Tensors.TensorPrimitives.Add(destination, buffer.Slice(0, destination.Length), destination);
    }

    /// <summary>Writes token t's K and V rows (<c>kv_dim</c> floats each, at k + t·kv_dim) into its block slot for <paramref name="layer"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Append(int layer, AttentionBatch batch, float* k, float* v)
    {
        var layout = _pool.Layout;
        int kvDim = layout.KvDim;
        for (int t = 0; t < batch.TokenCount; t++)
        {
            int block = batch.Blocks[t], slot = batch.Slots[t];
            for (int g = 0; g < layout.KvHeadCount; g++)
            {
                long offset = layout.Offset(g, slot);
                Store(k + (long)t * kvDim + g * _headDim, _pool.Key(block, layer), offset);
                Store(v + (long)t * kvDim + g * _headDim, _pool.Value(block, layer), offset);
            }
        }
    }

    private void Store(float* source, byte* plane, long offset)
    {
        var from = new ReadOnlySpan<float>(source, _headDim);
        if (_pool.Layout.Type == DType.F16) ElementConversion.SingleToHalf(from, new Span<Half>((Half*)plane + offset, _headDim));
        else from.CopyTo(new Span<float>((float*)plane + offset, _headDim));
    }

    /// <summary>
    /// out[t, h·d..] = softmax(R(p_t − o)·q[t,h] · Kᵀ/√d) · V over positions [0, Positions[t]] of token t's sequence, for
    /// layer <paramref name="layer"/>, where o is each block's rotation offset. <paramref name="q"/> is not yet rotated:
    /// rotating it here, once per offset, by the exact angle p − o keeps packet blocks as precise as blocks computed in place.
    /// <paramref name="cos"/> and <paramref name="sin"/> hold each token's angles at its own position ([tokens, d/2]).
    /// </summary>
    public void Attend(int layer, AttentionBatch batch, float* q, float* output, float* cos, float* sin)
    {
        for (int t = 0; t < batch.TokenCount; t++)
            if (batch.Positions[t] >= _maxContext) throw new ArgumentOutOfRangeException(nameof(batch), $"Position {batch.Positions[t]} is beyond the context of {_maxContext}.");
        _batch = batch;
        _layer = layer;
        _q = q;
        _out = output;
        _cos = cos;
        _sin = sin;

        // Runs of consecutive positions of one sequence (a prefill chunk), cut into query blocks.
        _queryBlockCount = 0;
        for (int t = 0; t < batch.TokenCount;)
        {
            int count = 1;
            while (count < QueryBlock && t + count < batch.TokenCount && batch.Sequences[t + count] == batch.Sequences[t]
                   && batch.Positions[t + count] == batch.Positions[t] + count) count++;
            _queryBlocks[_queryBlockCount++] = (t, count);
            t += count;
        }

        int items = _queryBlockCount * _pool.Layout.KvHeadCount;
        long work = 0;
        for (int t = 0; t < batch.TokenCount; t++) work += batch.Positions[t] + 1;
        if (work * _headCount * _headDim < 1 << 15) Execute(0, items, 0);
        else _workers.Run(this, items);
    }

    /// <inheritdoc />
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end, int worker)
    {
        var layout = _pool.Layout;
        int kvHeads = layout.KvHeadCount, d = _headDim, group = _group;
        long stride = _maxContext;
        float* scores = _scores[worker].Pointer;                           // [query in block, head in group, position]
        float* rows = scores + (long)QueryBlock * group * stride;          // one block's K or V rows of one head, as f32
        float* shifted = rows + (long)layout.BlockSize * d;                // the block's query heads, rotated for one offset
        float* angles = shifted + (long)QueryBlock * group * d;            // cos then sin for one position
        var batch = _batch!;

        for (int item = start; item < end; item++)
        {
            var (first, count) = _queryBlocks[item / kvHeads];
            int g = item % kvHeads;
            int sequence = batch.Sequences[first];
            var table = batch.Tables[sequence].AsSpan(0, batch.TableLengths[sequence]);
            int firstPosition = batch.Positions[first];
            int longest = firstPosition + count;   // keys the block's last query sees
            int rotation = int.MinValue;           // offset the queries in `shifted` are rotated for
            int covered = 0;                       // positions below this have a score or are masked

            foreach (var entry in table)
            {
                if (entry.FirstPosition >= longest) break;
                // A pruned packet leaves positions no block holds: they get no attention.
                if (entry.FirstPosition > covered) MaskGap(scores, stride, count, group, covered, entry.FirstPosition);
                covered = entry.FirstPosition + entry.Count;
                float* keys = Rows(_pool.Key(entry.Block, _layer), layout.Offset(g, entry.FirstSlot), Math.Min(entry.Count, longest - entry.FirstPosition), rows);
                if (rotation != entry.RotationOffset) RotateQueries(first, count, g, rotation = entry.RotationOffset, shifted, angles);
                long queryStride = (long)group * d;
                float* queries = shifted;

                for (int i = 0; i < count; i++)
                {
                    int visible = Math.Min(entry.Count, firstPosition + i + 1 - entry.FirstPosition);
                    float* q = queries + i * queryStride;
                    float* s = scores + (long)i * group * stride + entry.FirstPosition;
                    for (int h = 0; h < group; h++) _kernels.Scores(q + h * d, keys, visible, s + h * stride, _scale);
                }
            }
            for (int i = 0; i < count; i++)
                for (int h = 0; h < group; h++) Softmax.Apply(new Span<float>(scores + ((long)i * group + h) * stride, firstPosition + i + 1));
            if (_accumulating)
            {
                var mass = _mass![worker].Pointer;
                for (int i = 0; i < count; i++)
                    for (int h = 0; h < group; h++)
                    {
                        int length = firstPosition + i + 1;
                        System.Numerics.Tensors.TensorPrimitives.Add(new ReadOnlySpan<float>(scores + ((long)i * group + h) * stride, length),
                            new ReadOnlySpan<float>(mass, length), new Span<float>(mass, length));
                    }
            }

            for (int i = 0; i < count; i++) new Span<float>(_out + (long)(first + i) * _headCount * d + (long)g * group * d, group * d).Clear();
            foreach (var entry in table)
            {
                if (entry.FirstPosition >= longest) break;
                float* values = Rows(_pool.Value(entry.Block, _layer), layout.Offset(g, entry.FirstSlot), Math.Min(entry.Count, longest - entry.FirstPosition), rows);
                for (int i = 0; i < count; i++)
                {
                    int visible = Math.Min(entry.Count, firstPosition + i + 1 - entry.FirstPosition);
                    float* output = _out + (long)(first + i) * _headCount * d + (long)g * group * d;
                    for (int h = 0; h < group; h++)
                        _kernels.Accumulate(scores + ((long)i * group + h) * stride + entry.FirstPosition, values, visible, output + h * d);
                }
            }
        }
    }

    private static void MaskGap(float* scores, long stride, int count, int group, int from, int to)
    {
        for (int i = 0; i < count; i++)
            for (int h = 0; h < group; h++)
                new Span<float>(scores + ((long)i * group + h) * stride + from, to - from).Fill(float.NegativeInfinity);
    }

    /// <summary>
    /// Copies the group's query heads of <paramref name="count"/> tokens into <paramref name="shifted"/>, rotated to
    /// (position − <paramref name="offset"/>): with the step's own angles for offset 0, else with angles computed for it.
    /// </summary>
    private void RotateQueries(int first, int count, int g, int offset, float* shifted, float* angles)
    {
        int d = _headDim, pairs = d / 2;
        for (int i = 0; i < count; i++)
        {
            int t = first + i;
            var cos = new Span<float>(_cos + (long)t * pairs, pairs);
            var sin = new Span<float>(_sin + (long)t * pairs, pairs);
            if (offset != 0)
            {
                cos = new Span<float>(angles, pairs);
                sin = new Span<float>(angles + pairs, pairs);
                _rope.Angles(_batch!.Positions[t] - offset, cos, sin);
            }
            var target = new Span<float>(shifted + (long)i * _group * d, _group * d);
            new ReadOnlySpan<float>(_q + (long)t * _headCount * d + (long)g * _group * d, _group * d).CopyTo(target);
            _rope.Rotate(target, _group, cos, sin);
        }
    }

    /// <summary>The first <paramref name="count"/> rows of one head in a block plane, as f32 (widened into <paramref name="widened"/> for f16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private float* Rows(byte* plane, long offset, int count, float* widened)
    {
        if (_pool.Layout.Type != DType.F16) return (float*)plane + offset;
        ElementConversion.HalfToSingle(new ReadOnlySpan<Half>((Half*)plane + offset, count * _headDim), new Span<float>(widened, count * _headDim));
        return widened;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var buffer in _scores) buffer.Dispose();
        foreach (var buffer in _mass ?? []) buffer.Dispose();
    }
}
