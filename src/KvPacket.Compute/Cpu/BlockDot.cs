using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Dot products of one row of GGML q4_0 / q4_K / q5_K / q6_K blocks with one token of <see cref="QuantisedActivations"/>,
/// on the packed blocks: each 32 weights' unsigned levels meet the token's int8 values in one integer multiply-add
/// (AVX-VNNI <c>vpdpbusd</c>, or AVX2 <c>vpmaddubsw</c> + <c>vpmaddwd</c>: levels ≤ 63 times |x| ≤ 127 cannot saturate),
/// the eight int32 sums are scaled by weight step × activation step in f32, and the formats' offsets come off through
/// the activation's block sums (q4_0's 8 in integers, the k-quants' mins and q6_K's 32 in f32). The result is Σ dequantised weight ×
/// dequantised activation, summed in f32. Needs AVX2 (<see cref="IsSupported"/>).
/// </summary>
[SkipLocalsInit]
public static unsafe class BlockDot
{
    /// <summary>Whether this machine runs these kernels.</summary>
    public static bool IsSupported => Avx2.IsSupported;

    /// <summary>Whether <paramref name="type"/> is one of the formats dotted here.</summary>
    public static bool Handles(DType type) => type is DType.Q4_0 or DType.Q4_K or DType.Q5_K or DType.Q6_K;

    /// <summary>Σ over the row at <paramref name="row"/> (type <paramref name="type"/>) times token <paramref name="t"/> of <paramref name="x"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Row(DType type, byte* row, QuantisedActivations x, int t) => type switch
    {
        DType.Q4_0 => Q4_0(row, x, t),
        DType.Q4_K => Q4_K(row, x, t),
        DType.Q5_K => Q5_K(row, x, t),
        DType.Q6_K => Q6_K(row, x, t),
        _ => throw new NotSupportedException(type.ToString()),
    };

    /// <summary>A q4_0 row: Σ_b d_b·step_b·(levels·x − 8·Σx_b), the 8 taken off in integers.</summary>
    public static float Q4_0(byte* row, QuantisedActivations x, int t)
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t);
        int* levelSums = x.LevelSums(t);
        var mask = Vector128.Create((byte)0xF);
        Vector256<float> sum = default;
        for (int b = 0; b < x.Columns / 32; b++, row += Core.Checkpoints.Q4_0.BlockBytes)
        {
            var packed = Vector128.Load(row + 2);
            var levels = Vector256.Create(packed & mask, Vector128.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask);
            // The lanes are partial sums of one row: the offset comes off once, in lane 0.
            var exact = MultiplyAdd(Vector256<int>.Zero, levels, Vector256.Load(xq + 32 * b)) - Vector256.CreateScalar(8 * levelSums[b]);
            sum = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(exact), Vector256.Create(Half(row) * steps[b]), sum);
        }
        return Vector256.Sum(sum);
    }

    /// <summary>A q4_K row: per sub-block j, d·sc_j·step_j·(levels·x) − dmin·m_j·Σx_j.</summary>
    public static float Q4_K(byte* row, QuantisedActivations x, int t) =>
        KRow(row, x, t, Core.Checkpoints.Q4_K.BlockBytes, Core.Checkpoints.Q4_K.LevelsOffset, fifthBits: -1);

    /// <summary>A q5_K row: as <see cref="Q4_K"/> with each level's fifth bit from the block's 32 high-bit bytes.</summary>
    public static float Q5_K(byte* row, QuantisedActivations x, int t) =>
        KRow(row, x, t, Core.Checkpoints.Q5_K.BlockBytes, Core.Checkpoints.Q5_K.LevelsOffset, Core.Checkpoints.Q5_K.HighBitsOffset);

    /// <summary>q4_K (<paramref name="fifthBits"/> negative) or q5_K (fifth bits at that offset of each block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float KRow(byte* row, QuantisedActivations x, int t, int blockBytes, int levelsOffset, int fifthBits)
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t);
        int* levelSums = x.LevelSums(t);
        Vector256<float> even = default, odd = default;
        float offset = 0;
        int superBlocks = x.Columns / 256;
        for (int s = 0; s < superBlocks; s++, row += blockBytes)
        {
            float d = Half(row), dMin = Half(row + 2);
            var scales = new ReadOnlySpan<byte>(row + 4, KQuantScales.Bytes);
            var high = fifthBits < 0 ? default : Vector256.Load(row + fifthBits).AsUInt16();
            for (int c = 0; c < 4; c++)
            {
                var packed = Vector256.Load(row + levelsOffset + 32 * c);
                int j = 8 * s + 2 * c;
                var (sc0, m0) = KQuantScales.Get(scales, 2 * c);
                var (sc1, m1) = KQuantScales.Get(scales, 2 * c + 1);
                var lo = LowNibbles(packed);
                var hi = HighNibbles(packed);
                if (fifthBits >= 0)
                {
                    lo |= FifthBit(high, 2 * c);
                    hi |= FifthBit(high, 2 * c + 1);
                }
                even = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Products(lo, Vector256.Load(xq + 32 * j))), Vector256.Create(d * sc0 * steps[j]), even);
                odd = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Products(hi, Vector256.Load(xq + 32 * j + 32))), Vector256.Create(d * sc1 * steps[j + 1]), odd);
                offset += dMin * (m0 * (levelSums[j] * steps[j]) + m1 * (levelSums[j + 1] * steps[j + 1]));
            }
        }
        return Vector256.Sum(even + odd) - offset;
    }

    /// <summary>A q6_K row: per 16 values i, d·sc_i·step·(levels·x) − 32·d·sc_i·Σx_i.</summary>
    public static float Q6_K(byte* row, QuantisedActivations x, int t)
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t), sums = x.Sums(t);
        Vector256<float> even = default, odd = default;
        float offset = 0;
        int superBlocks = x.Columns / 256;
        var pair = Vector256.Create((byte)0x30);
        for (int s = 0; s < superBlocks; s++, row += Core.Checkpoints.Q6_K.BlockBytes)
        {
            float d = Half(row + Core.Checkpoints.Q6_K.DOffset);
            sbyte* scales = (sbyte*)(row + Core.Checkpoints.Q6_K.ScalesOffset);
            for (int h = 0; h < 2; h++)
            {
                var low0 = Vector256.Load(row + 64 * h);
                var low1 = Vector256.Load(row + 64 * h + 32);
                var high = Vector256.Load(row + Core.Checkpoints.Q6_K.HighBitsOffset + 32 * h).AsUInt16();
                int j = 8 * s + 4 * h;
                // Group g's two high bits are bits 2g..2g+1 of each high byte, moved to bits 4..5.
                even = Q6Group(LowNibbles(low0) | ((high << 4).AsByte() & pair), xq, steps, sums, j, d, scales + 8 * h, even, ref offset);
                odd = Q6Group(LowNibbles(low1) | ((high << 2).AsByte() & pair), xq, steps, sums, j + 1, d, scales + 8 * h + 2, odd, ref offset);
                even = Q6Group(HighNibbles(low0) | (high.AsByte() & pair), xq, steps, sums, j + 2, d, scales + 8 * h + 4, even, ref offset);
                odd = Q6Group(HighNibbles(low1) | ((high >> 2).AsByte() & pair), xq, steps, sums, j + 3, d, scales + 8 * h + 6, odd, ref offset);
            }
        }
        return Vector256.Sum(even + odd) - offset;
    }

    /// <summary>One q6_K block of 32 (activation block <paramref name="j"/>) with its two 16-value scales at <paramref name="scales"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Q6Group(Vector256<byte> levels, sbyte* xq, float* steps, float* sums, int j, float d, sbyte* scales,
        Vector256<float> accumulator, ref float offset)
    {
        float a = d * scales[0], b = d * scales[1];
        var factor = Vector256.Create(Vector128.Create(a * steps[j]), Vector128.Create(b * steps[j]));
        offset += 32 * (a * sums[2 * j] + b * sums[2 * j + 1]);
        return Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(Products(levels, Vector256.Load(xq + 32 * j))), factor, accumulator);
    }

    /// <summary>
    /// <paramref name="sum"/> plus 32 unsigned levels times 32 int8 activations, four adjacent products per int32 lane
    /// (AVX-VNNI <c>vpdpbusd</c>; AVX2 <c>vpmaddubsw</c> + <c>vpmaddwd</c>, which levels ≤ 63 cannot saturate).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> MultiplyAdd(Vector256<int> sum, Vector256<byte> levels, Vector256<sbyte> x) => AvxVnni.IsSupported
        ? AvxVnni.MultiplyWideningAndAdd(sum, levels, x)
        : sum + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(levels, x), Vector256.Create((short)1));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Products(Vector256<byte> levels, Vector256<sbyte> x) => MultiplyAdd(Vector256<int>.Zero, levels, x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> LowNibbles(Vector256<byte> packed) => packed & Vector256.Create((byte)0xF);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> HighNibbles(Vector256<byte> packed) => (packed.AsUInt16() >> 4).AsByte() & Vector256.Create((byte)0xF);

    /// <summary>Bit <paramref name="j"/> of each of 32 bytes, moved to bit 4 (shifts on 16-bit lanes, masked before any bit crosses a byte).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> FifthBit(Vector256<ushort> high, int j) => (((high >> j).AsByte() & Vector256.Create((byte)1)).AsUInt16() << 4).AsByte();

    /// <summary>The f16 scale at <paramref name="p"/> (finite: checked at load).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Half(byte* p) => Dot.HalfToSingle(*(ushort*)p);
}
