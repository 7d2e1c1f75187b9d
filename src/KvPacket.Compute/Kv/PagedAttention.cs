using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Kv;

/// <summary>
/// Causal grouped-query attention over a paged KV cache. <see cref="Append"/> stores each token's rotated key and
/// value in its block slot; <see cref="Attend"/> then computes, per token and KV head, the attention of every
/// query head in that group (each key is loaded once per group). Work is split over (token, KV head) pairs.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class PagedAttention : IParallelWork, IDisposable
{
    private readonly KvBlockPool _pool;
    private readonly WorkerPool _workers;
    private readonly int _headCount, _group, _headDim, _maxContext;
    private readonly NativeBuffer<float>[] _scores;
    private readonly float _scale;

    private AttentionBatch? _batch;
    private int _layer;
    private float* _q, _out;

    /// <summary>Creates the kernel for <paramref name="headCount"/> query heads over <paramref name="pool"/>.</summary>
    public PagedAttention(KvBlockPool pool, WorkerPool workers, int headCount, int maxContext)
    {
        _pool = pool;
        _workers = workers;
        _headCount = headCount;
        _headDim = pool.Layout.HeadDim;
        _group = headCount / pool.Layout.KvHeadCount;
        _maxContext = maxContext;
        _scale = 1f / MathF.Sqrt(_headDim);
        _scores = new NativeBuffer<float>[workers.ThreadCount];
        for (int i = 0; i < _scores.Length; i++) _scores[i] = new NativeBuffer<float>((long)_group * maxContext + (long)pool.Layout.BlockSize * _headDim);
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
        int items = batch.TokenCount * _pool.Layout.KvHeadCount;
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
        int kvHeads = layout.KvHeadCount, blockSize = layout.BlockSize, d = _headDim;
        float* scores = _scores[worker].Pointer;
        float* rows = scores + (long)_group * _maxContext;   // one block's K or V rows for one head, widened to f32
        var batch = _batch!;

        for (int item = start; item < end; item++)
        {
            int t = item / kvHeads, g = item % kvHeads;
            int length = batch.Positions[t] + 1;
            int[] table = batch.BlockTables[batch.Sequences[t]];
            float* q = _q + (long)t * _headCount * d + (long)g * _group * d;

            for (int j0 = 0; j0 < length; j0 += blockSize)
            {
                int n = Math.Min(blockSize, length - j0);
                float* keys = Rows(_pool.Key(table[j0 / blockSize], _layer), layout.Offset(g, 0), n, rows);
                for (int j = 0; j < n; j++)
                    for (int h = 0; h < _group; h++) scores[(long)h * _maxContext + j0 + j] = Dot.F32(q + h * d, keys + j * d, d) * _scale;
            }
            for (int h = 0; h < _group; h++) Softmax.Apply(new Span<float>(scores + (long)h * _maxContext, length));

            float* output = _out + (long)t * _headCount * d + (long)g * _group * d;
            new Span<float>(output, _group * d).Clear();
            for (int j0 = 0; j0 < length; j0 += blockSize)
            {
                int n = Math.Min(blockSize, length - j0);
                float* values = Rows(_pool.Value(table[j0 / blockSize], _layer), layout.Offset(g, 0), n, rows);
                for (int h = 0; h < _group; h++)
                    for (int j = 0; j < n; j++) Axpy(scores[(long)h * _maxContext + j0 + j], values + j * d, output + h * d, d);
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
