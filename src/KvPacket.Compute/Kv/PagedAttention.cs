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
    private readonly WorkerPool _workers;
    private readonly int _headCount, _group, _headDim, _maxContext;
    private readonly NativeBuffer<float>[] _scores;
    private readonly float _scale;
    private readonly (int First, int Count)[] _queryBlocks;

    private AttentionBatch? _batch;
    private int _layer, _queryBlockCount;
    private float* _q, _out;

    /// <summary>Creates the kernel for <paramref name="headCount"/> query heads over <paramref name="pool"/>, for steps of at most <paramref name="maxTokens"/> tokens.</summary>
    public PagedAttention(KvBlockPool pool, WorkerPool workers, int headCount, int maxContext, int maxTokens)
    {
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
            _scores[i] = new NativeBuffer<float>((long)QueryBlock * _group * _maxContext + (long)pool.Layout.BlockSize * _headDim);
    }

    /// <summary>Writes token t's K and V rows (<c>kv_dim</c> floats each, at k + t·kv_dim) into its slot for <paramref name="layer"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Append(int layer, AttentionBatch batch, float* k, float* v)
    {
        var layout = _pool.Layout;
        int kvDim = layout.KvDim;
        for (int t = 0; t < batch.TokenCount; t++)
        {
            int position = batch.Positions[t];
            int[] table = batch.BlockTables[batch.Sequences[t]];
            int block = table[position / layout.BlockSize];
            int slot = position % layout.BlockSize;
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
    /// out[t, h·d..] = softmax(q[t,h]·Kᵀ/√d) · V over positions [0, Positions[t]] of token t's sequence, for layer <paramref name="layer"/>.
    /// </summary>
    public void Attend(int layer, AttentionBatch batch, float* q, float* output)
    {
        for (int t = 0; t < batch.TokenCount; t++)
            if (batch.Positions[t] >= _maxContext) throw new ArgumentOutOfRangeException(nameof(batch), $"Position {batch.Positions[t]} is beyond the context of {_maxContext}.");
        _batch = batch;
        _layer = layer;
        _q = q;
        _out = output;

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
        int kvHeads = layout.KvHeadCount, blockSize = layout.BlockSize, d = _headDim, group = _group;
        long stride = _maxContext;
        float* scores = _scores[worker].Pointer;                         // [query in block, head in group, position]
        float* rows = scores + (long)QueryBlock * group * stride;        // one block's K or V rows of one head, as f32
        var batch = _batch!;

        for (int item = start; item < end; item++)
        {
            var (first, count) = _queryBlocks[item / kvHeads];
            int g = item % kvHeads;
            int[] table = batch.BlockTables[batch.Sequences[first]];
            int firstPosition = batch.Positions[first];
            int longest = firstPosition + count;   // keys the block's last query sees

            for (int j0 = 0; j0 < longest; j0 += blockSize)
            {
                float* keys = Rows(_pool.Key(table[j0 / blockSize], _layer), layout.Offset(g, 0), Math.Min(blockSize, longest - j0), rows);
                for (int i = 0; i < count; i++)
                {
                    int visible = Math.Min(blockSize, firstPosition + i + 1 - j0);
                    float* q = _q + (long)(first + i) * _headCount * d + (long)g * group * d;
                    float* s = scores + (long)i * group * stride + j0;
                    for (int j = 0; j < visible; j++)
                        for (int h = 0; h < group; h++) s[h * stride + j] = Dot.F32(q + h * d, keys + j * d, d) * _scale;
                }
            }
            for (int i = 0; i < count; i++)
                for (int h = 0; h < group; h++) Softmax.Apply(new Span<float>(scores + ((long)i * group + h) * stride, firstPosition + i + 1));

            for (int i = 0; i < count; i++) new Span<float>(_out + (long)(first + i) * _headCount * d + (long)g * group * d, group * d).Clear();
            for (int j0 = 0; j0 < longest; j0 += blockSize)
            {
                float* values = Rows(_pool.Value(table[j0 / blockSize], _layer), layout.Offset(g, 0), Math.Min(blockSize, longest - j0), rows);
                for (int i = 0; i < count; i++)
                {
                    int visible = Math.Min(blockSize, firstPosition + i + 1 - j0);
                    float* output = _out + (long)(first + i) * _headCount * d + (long)g * group * d;
                    for (int h = 0; h < group; h++)
                    {
                        float* s = scores + ((long)i * group + h) * stride + j0;
                        for (int j = 0; j < visible; j++) Axpy(s[j], values + j * d, output + h * d, d);
                    }
                }
            }
        }
    }

    /// <summary>y += a·x over <paramref name="n"/> floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy(float a, float* x, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var va = Vector512.Create(a);
            for (; i <= n - 16; i += 16) Vector512.FusedMultiplyAdd(va, Vector512.Load(x + i), Vector512.Load(y + i)).Store(y + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var va = Vector256.Create(a);
            for (; i <= n - 8; i += 8) Vector256.FusedMultiplyAdd(va, Vector256.Load(x + i), Vector256.Load(y + i)).Store(y + i);
        }
        for (; i < n; i++) y[i] += a * x[i];
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
    }
}
