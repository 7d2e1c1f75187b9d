using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Dot products of an f32 activation with weight rows in f32, bf16 or f16: Vector512 where the CPU has it, Vector256
/// otherwise, a scalar tail for the rest. Every routine here sums in the same order (one accumulator, 16 lanes
/// at a time, then 8, then scalar), the order of <see cref="MatMul"/>'s GEMM tile too, so a token's result does not
/// depend on how many other tokens share its batch. The four-row forms hide FMA latency across rows instead.
/// </summary>
public static unsafe class Dot
{
    /// <summary>Σ a[i]·b[i] over f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F32(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> s = default;
            for (; i <= n - 16; i += 16) s = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), s);
            sum = Vector512.Sum(s);
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            Vector256<float> s = default;
            for (; i <= n - 8; i += 8) s = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), s);
            sum += Vector256.Sum(s);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>
    /// Four f32 rows (<paramref name="stride"/> apart) against one activation: y[r] = Σ x[i]·w_r[i] over n, each row
    /// summed as <see cref="F32"/> would (the GEMM's leftover tokens).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void F32x4(float* x, float* w, int n, long stride, float* y)
    {
        if (!Vector512.IsHardwareAccelerated || n % 16 != 0)
        {
            for (int r = 0; r < 4; r++) y[r] = F32(x, w + r * stride, n);
            return;
        }
        float* w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int i = 0; i < n; i += 16)
        {
            var v = Vector512.Load(x + i);
            s0 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w + i), s0);
            s1 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w1 + i), s1);
            s2 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w2 + i), s2);
            s3 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w3 + i), s3);
        }
        y[0] = Vector512.Sum(s0); y[1] = Vector512.Sum(s1); y[2] = Vector512.Sum(s2); y[3] = Vector512.Sum(s3);
    }

    /// <summary>Σ x[i]·w[i] with <paramref name="w"/> in bf16 (widened by a 16-bit shift in registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16(float* x, ushort* w, int n) => Sum<BFloat16>(x, w, n);

    /// <summary>Σ x[i]·w[i] with <paramref name="w"/> in f16 (widened exactly in registers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16(float* x, ushort* w, int n) => Sum<Float16>(x, w, n);

    /// <summary>
    /// Asks for one cache line of each of four rows (<paramref name="stride"/> bytes apart) from <paramref name="line"/>
    /// into L2. Spread over the loop — as much asked for per step as is read — the requests keep the stream full where a
    /// burst of ~100 lines per row group into L1 did not: on the 2-core AMD EPYC VMs the classifier GEMV from DRAM of
    /// <c>MatMulBenchmarks</c> ran 1.7–2.3× faster in f32, f16 and bf16 (f16 at 31 GB/s;
    /// <c>benchmarks/results/matmul-gemv-prefetch-2core-2026-12-01.txt</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Ask(byte* line, long stride)
    {
        if (!Sse.IsSupported) return;
        Sse.Prefetch1(line);
        Sse.Prefetch1(line + stride);
        Sse.Prefetch1(line + 2 * stride);
        Sse.Prefetch1(line + 3 * stride);
    }

    /// <summary>
    /// Σ x[i]·w[i] over q8_0 blocks (<paramref name="n"/> a multiple of 32; 34 bytes per block: an f16 scale, 32 int8),
    /// Vector512 only. Each weight is widened in registers to its exact dequantised value, held times 2^-112 as
    /// <see cref="F16"/> holds f16 (the scale's bits moved into f32's fields; int8 × an 11-bit scale is exact), so the sum
    /// is bit-equal to <see cref="F32"/> over the dequantised row. Scales must be finite (readers check).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Q8_0(float* x, byte* blocks, int n)
    {
        var scale = Vector512.Create(XScale);
        Vector512<float> s = default;
        for (int i = 0; i < n; i += 32, blocks += 34)
        {
            var (lo, hi) = WidenQ8_0(blocks);
            s = Vector512.FusedMultiplyAdd(Vector512.Load(x + i) * scale, lo, s);
            s = Vector512.FusedMultiplyAdd(Vector512.Load(x + i + 16) * scale, hi, s);
        }
        return Vector512.Sum(s) * SumScale;
    }

    /// <summary>Four q8_0 rows (<paramref name="stride"/> bytes apart) against one activation, each summed as <see cref="Q8_0(float*, byte*, int)"/> would. <paramref name="ahead"/>: the same columns of the four rows read next, asked for into L2 as these are read (<see cref="Ask"/>), or null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Q8_0x4(float* x, byte* blocks, int n, long stride, float* y, byte* ahead = null)
    {
        var scale = Vector512.Create(XScale);
        byte* b1 = blocks + stride, b2 = b1 + stride, b3 = b2 + stride;
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int i = 0, o = 0; i < n; i += 32, o += 34)
        {
            if (ahead != null) Ask(ahead + o, stride);
            var xl = Vector512.Load(x + i) * scale;
            var xh = Vector512.Load(x + i + 16) * scale;
            var (l0, h0) = WidenQ8_0(blocks + o);
            s0 = Vector512.FusedMultiplyAdd(xh, h0, Vector512.FusedMultiplyAdd(xl, l0, s0));
            var (l1, h1) = WidenQ8_0(b1 + o);
            s1 = Vector512.FusedMultiplyAdd(xh, h1, Vector512.FusedMultiplyAdd(xl, l1, s1));
            var (l2, h2) = WidenQ8_0(b2 + o);
            s2 = Vector512.FusedMultiplyAdd(xh, h2, Vector512.FusedMultiplyAdd(xl, l2, s2));
            var (l3, h3) = WidenQ8_0(b3 + o);
            s3 = Vector512.FusedMultiplyAdd(xh, h3, Vector512.FusedMultiplyAdd(xl, l3, s3));
        }
        y[0] = Vector512.Sum(s0) * SumScale; y[1] = Vector512.Sum(s1) * SumScale; y[2] = Vector512.Sum(s2) * SumScale; y[3] = Vector512.Sum(s3) * SumScale;
    }

    /// <summary>The f16 <paramref name="bits"/> as f32, exactly, by <see cref="Float16"/>'s integer move (finite values only: readers check).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfToSingle(ushort bits) => Float16.Widen(bits) * TwoTo112;

    /// <summary>Eight f16 values as f32, exactly, as <see cref="HalfToSingle"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> HalvesToSingle(Vector128<ushort> bits) => Float16.Widen(bits) * Vector256.Create(TwoTo112);

    /// <summary>2^112: undoes <see cref="Float16"/>'s scaling of one value.</summary>
    private const float TwoTo112 = 5.1922968585348276e33f;

    /// <summary>2^100: activations times this meet weights held times 2^-112 (f16, q8_0); the sum is then times 2^-12.</summary>
    private const float XScale = 1.2676506e30f;

    /// <summary>2^12: undoes the scaling of such a sum.</summary>
    private const float SumScale = 4096f;

    /// <summary>One q8_0 block's 32 values, times 2^-112, as two vectors of 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<float> Lower, Vector512<float> Upper) WidenQ8_0(byte* block)
    {
        var scale = Vector512.Create(Float16.Widen(*(ushort*)block));
        var (lower, upper) = Vector256.Widen(Vector256.Load((sbyte*)(block + 2)));
        return (Vector512.ConvertToSingle(Vector512.WidenLower(lower.ToVector512())) * scale,
                Vector512.ConvertToSingle(Vector512.WidenLower(upper.ToVector512())) * scale);
    }

    /// <summary>
    /// How 16-bit weights widen to f32 in registers; a struct per format, so each loop is compiled for its own. A
    /// <see cref="Scaled"/> format widens to its value times 2^-112: the activation is then loaded times
    /// <see cref="XScale"/> and the sum multiplied by <see cref="SumScale"/>, powers of two that change no rounding while
    /// no value leaves f32's normal range.
    /// </summary>
    private interface IWidening
    {
        static abstract bool Scaled { get; }
        static abstract (Vector512<float> Lower, Vector512<float> Upper) Widen(Vector512<ushort> bits);
        static abstract Vector256<float> Widen(Vector128<ushort> bits);
        static abstract float Widen(ushort bits);
    }

    /// <summary>
    /// The 32 values' 64-bit quarters reordered 0, 4, 1, 5, 2, 6, 3, 7, so that unpacking within 128-bit lanes gives values
    /// 0..15 (low) and 16..31 (high) in order — one cross-lane step where widening in halves needs three (measured on
    /// Zen 4 as part of the f16 GEMV's gain).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ushort> InLaneOrder(Vector512<ushort> bits) =>
        Avx512F.PermuteVar8x64(bits.AsUInt64(), Vector512.Create(0UL, 4, 1, 5, 2, 6, 3, 7)).AsUInt16();

    /// <summary>bf16: the top half of an f32.</summary>
    private readonly struct BFloat16 : IWidening
    {
        public static bool Scaled => false;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> Lower, Vector512<float> Upper) Widen(Vector512<ushort> bits)
        {
            if (Avx512BW.IsSupported)
            {
                // Each value interleaved with itself, then shifted into the top half of its 32-bit lane: the f32 itself.
                // Interleaving with zeros gives the same bits in fewer operations, yet read from memory on two threads it
                // ran at 0.95 of the f16 GEMV's pace and this at 1.01 (2-core Zen 4 VM, one process, six runs each:
                // benchmarks/results/bf16-widen-ab-2core-2026-12-02.txt).
                var ordered = InLaneOrder(bits);
                return ((Avx512BW.UnpackLow(ordered, ordered).AsInt32() << 16).AsSingle(), (Avx512BW.UnpackHigh(ordered, ordered).AsInt32() << 16).AsSingle());
            }
            var (lower, upper) = Vector512.Widen(bits);
            return (Vector512.ShiftLeft(lower, 16).AsSingle(), Vector512.ShiftLeft(upper, 16).AsSingle());
        }

        public static Vector256<float> Widen(Vector128<ushort> bits) => Vector256.ShiftLeft(Vector256.WidenLower(bits.ToVector256()), 16).AsSingle();

        public static float Widen(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);
    }

    /// <summary>
    /// IEEE f16, widened to its value times 2^-112: sign-extended to 32 bits and shifted so exponent and mantissa land in
    /// f32's fields, the exponent 112 short of f32's bias (subnormals become f32 subnormals, exactly), the sign
    /// copies between cleared. Two integer operations, as cheap as bf16's shift. Infinities and NaNs would read as
    /// finite: checkpoint readers refuse f16 weights that are not finite.
    /// </summary>
    private readonly struct Float16 : IWidening
    {
        public static bool Scaled => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static (Vector512<float> Lower, Vector512<float> Upper) Widen(Vector512<ushort> bits)
        {
            if (Avx512BW.IsSupported)
            {
                // Each value interleaved with itself, then shifted right arithmetically: the value lands in bits 13..28
                // with its sign above, the copy's bits fall below 13 — the mask keeps what the sign-extending form keeps.
                var ordered = InLaneOrder(bits).AsInt16();
                var tidy = Vector512.Create(unchecked((int)0x8FFF_E000));
                return (((Avx512BW.UnpackLow(ordered, ordered).AsInt32() >> 3) & tidy).AsSingle(),
                        ((Avx512BW.UnpackHigh(ordered, ordered).AsInt32() >> 3) & tidy).AsSingle());
            }
            var (lower, upper) = Vector512.Widen(bits.AsInt16());
            var mask = Vector512.Create(unchecked((int)0x8FFF_FFFF));
            return (((lower << 13) & mask).AsSingle(), ((upper << 13) & mask).AsSingle());
        }

        public static Vector256<float> Widen(Vector128<ushort> bits) =>
            ((Vector256.WidenLower(bits.AsInt16().ToVector256()) << 13) & Vector256.Create(unchecked((int)0x8FFF_FFFF))).AsSingle();

        public static float Widen(ushort bits) => BitConverter.Int32BitsToSingle(((bits & 0x7FFF) << 13) | ((bits & 0x8000) << 16));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Sum<T>(float* x, ushort* w, int n) where T : struct, IWidening
    {
        int i = 0;
        float sum = 0;
        float scale = T.Scaled ? XScale : 1;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> s = default;
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = T.Widen(Vector512.Load(w + i));
                s = Vector512.FusedMultiplyAdd(Scaled<T>(Vector512.Load(x + i), scale), lo, s);
                s = Vector512.FusedMultiplyAdd(Scaled<T>(Vector512.Load(x + i + 16), scale), hi, s);
            }
            if (i <= n - 16)
            {
                var (lo, _) = T.Widen(Vector256.Load(w + i).ToVector512());
                s = Vector512.FusedMultiplyAdd(Scaled<T>(Vector512.Load(x + i), scale), lo, s);
                i += 16;
            }
            sum = Vector512.Sum(s);
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            Vector256<float> s = default;
            for (; i <= n - 8; i += 8)
            {
                var x8 = Vector256.Load(x + i);
                if (T.Scaled) x8 *= scale;
                s = Vector256.FusedMultiplyAdd(x8, T.Widen(Vector128.Load(w + i)), s);
            }
            sum += Vector256.Sum(s);
        }
        for (; i < n; i++) sum += (T.Scaled ? x[i] * scale : x[i]) * T.Widen(w[i]);
        return T.Scaled ? sum * SumScale : sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Scaled<T>(Vector512<float> x, float scale) where T : struct, IWidening =>
        T.Scaled ? x * scale : x;
}
