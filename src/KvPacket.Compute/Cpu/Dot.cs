using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Dot products of an f32 activation with weight rows in f32 or bf16: Vector512 where the CPU has it, Vector256
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
    /// summed as <see cref="F32"/> would.
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
    public static float BF16(float* x, ushort* w, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> s = default;
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.Load(w + i));
                s = Vector512.FusedMultiplyAdd(Vector512.Load(x + i), Vector512.ShiftLeft(lo, 16).AsSingle(), s);
                s = Vector512.FusedMultiplyAdd(Vector512.Load(x + i + 16), Vector512.ShiftLeft(hi, 16).AsSingle(), s);
            }
            if (i <= n - 16)
            {
                var (lo, _) = Vector512.Widen(Vector256.Load(w + i).ToVector512());
                s = Vector512.FusedMultiplyAdd(Vector512.Load(x + i), Vector512.ShiftLeft(lo, 16).AsSingle(), s);
                i += 16;
            }
            sum = Vector512.Sum(s);
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            Vector256<float> s = default;
            for (; i <= n - 8; i += 8)
            {
                var (lo, _) = Vector256.Widen(Vector128.Load(w + i).ToVector256());
                s = Vector256.FusedMultiplyAdd(Vector256.Load(x + i), Vector256.ShiftLeft(lo, 16).AsSingle(), s);
            }
            sum += Vector256.Sum(s);
        }
        for (; i < n; i++) sum += x[i] * BitConverter.Int32BitsToSingle(w[i] << 16);
        return sum;
    }

    /// <summary>Four bf16 rows (<paramref name="stride"/> apart) against one activation, each row summed as <see cref="BF16"/> would.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BF16x4(float* x, ushort* w, int n, long stride, float* y)
    {
        if (!Vector512.IsHardwareAccelerated || n % 32 != 0)
        {
            for (int r = 0; r < 4; r++) y[r] = BF16(x, w + r * stride, n);
            return;
        }
        ushort* w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int i = 0; i < n; i += 32)
        {
            var lo = Vector512.Load(x + i);
            var hi = Vector512.Load(x + i + 16);
            s0 = Accumulate(lo, hi, w + i, s0);
            s1 = Accumulate(lo, hi, w1 + i, s1);
            s2 = Accumulate(lo, hi, w2 + i, s2);
            s3 = Accumulate(lo, hi, w3 + i, s3);
        }
        y[0] = Vector512.Sum(s0); y[1] = Vector512.Sum(s1); y[2] = Vector512.Sum(s2); y[3] = Vector512.Sum(s3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Accumulate(Vector512<float> xLo, Vector512<float> xHi, ushort* w, Vector512<float> s)
    {
        var (lo, hi) = Vector512.Widen(Vector512.Load(w));
        s = Vector512.FusedMultiplyAdd(xLo, Vector512.ShiftLeft(lo, 16).AsSingle(), s);
        return Vector512.FusedMultiplyAdd(xHi, Vector512.ShiftLeft(hi, 16).AsSingle(), s);
    }
}
