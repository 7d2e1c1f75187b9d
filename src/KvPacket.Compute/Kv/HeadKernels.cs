using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using KvPacket.Compute.Cpu;

namespace KvPacket.Compute.Kv;

/// <summary>
/// The two inner loops of attention for one query head against one block's rows: scores (q·k for each key) and the
/// weighted sum of values. <see cref="GenericHeadKernels"/> works for any head dim; the source generator emits one
/// per model card with the head dim fixed, the query (or output row) held in registers and the loop unrolled. Both
/// sum in the same order, so they agree to the last bit.
/// </summary>
public abstract unsafe class HeadKernels
{
    /// <summary>Width of a head.</summary>
    public abstract int HeadDim { get; }

    /// <summary>scores[j] = (q · keys[j]) · scale for <paramref name="count"/> consecutive key rows.</summary>
    public abstract void Scores(float* q, float* keys, int count, float* scores, float scale);

    /// <summary>output += Σ_j weights[j] · values[j] over <paramref name="count"/> consecutive value rows.</summary>
    public abstract void Accumulate(float* weights, float* values, int count, float* output);
}

/// <summary>Attention inner loops for any head dim.</summary>
public sealed unsafe class GenericHeadKernels(int headDim) : HeadKernels
{
    /// <inheritdoc />
    public override int HeadDim => headDim;

    /// <inheritdoc />
    public override void Scores(float* q, float* keys, int count, float* scores, float scale)
    {
        for (int j = 0; j < count; j++) scores[j] = Dot.F32(q, keys + (long)j * headDim, headDim) * scale;
    }

    /// <inheritdoc />
    public override void Accumulate(float* weights, float* values, int count, float* output)
    {
        for (int j = 0; j < count; j++) Axpy(weights[j], values + (long)j * headDim, output, headDim);
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
        for (; i < n; i++) y[i] = MathF.FusedMultiplyAdd(a, x[i], y[i]);
    }
}
