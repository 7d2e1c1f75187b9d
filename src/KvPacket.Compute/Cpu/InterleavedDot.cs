using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Eight interleaved rows (<see cref="InterleavedRows"/>) against one token, or against four tokens sharing the rows'
/// unpacked levels, of <see cref="QuantisedActivations"/>: each 32-value block is eight integer multiply-adds whose
/// 32-bit lanes are the eight rows (AVX-VNNI <c>vpdpbusd</c>, or AVX2 <c>vpmaddubsw</c> + <c>vpmaddwd</c>), then one
/// f32 multiply-add by the rows' scales times the token's step. Every lane (row) sees the same f32 operations in the
/// same order whichever kernel ran it, so a token's result does not depend on its batch. Needs AVX2.
/// </summary>
[SkipLocalsInit]
public static unsafe class InterleavedDot
{
    /// <summary>Whether <paramref name="type"/> is an interleaved layout dotted here.</summary>
    public static bool Handles(DType type) => type is DType.Q4_0x8 or DType.Q4_Kx8 or DType.Q5_Kx8 or DType.Q8_0x8 or DType.Q6_Kx8;

    /// <summary>y[0..8) (stride <paramref name="stride"/> between tokens) for tokens [<paramref name="t0"/>, <paramref name="t1"/>) against the eight rows of <paramref name="group"/>.</summary>
    public static void Group(DType type, byte* group, QuantisedActivations x, int t0, int t1, float* y, long stride)
    {
        int t = t0;
        if (type == DType.Q4_0x8)
        {
            for (; t <= t1 - 8; t += 8) BlockTokens8<Q4_0Block>(group, x, t, y + t * stride, stride);
            for (; t <= t1 - 4; t += 4) BlockTokens4<Q4_0Block>(group, x, t, y + t * stride, stride);
            for (; t < t1; t++) BlockToken<Q4_0Block>(group, x, t).Store(y + t * stride);
        }
        else if (type == DType.Q6_Kx8)
        {
            for (; t <= t1 - 4; t += 4) Q6_KTokens4(group, x, t, y + t * stride, stride);
            for (; t < t1; t++) Q6_KToken(group, x, t).Store(y + t * stride);
        }
        else if (type == DType.Q8_0x8)
        {
            for (; t <= t1 - 8; t += 8)
                if (AvxVnni.IsSupported) BlockTokens8<Q8_0Block>(group, x, t, y + t * stride, stride);
                else Q8_0Tokens8(group, x, t, y + t * stride, stride);
            for (; t <= t1 - 4; t += 4) BlockTokens4<Q8_0Block>(group, x, t, y + t * stride, stride);
            for (; t < t1; t++) BlockToken<Q8_0Block>(group, x, t).Store(y + t * stride);
        }
        else if (type == DType.Q5_Kx8)
        {
            for (; t <= t1 - 8; t += 8) KTokens8<Levels5>(group, x, t, y + t * stride, stride);
            for (; t <= t1 - 4; t += 4) KTokens4<Levels5>(group, x, t, y + t * stride, stride);
            for (; t < t1; t++) KToken<Levels5>(group, x, t).Store(y + t * stride);
        }
        else
        {
            for (; t <= t1 - 8; t += 8) KTokens8<Levels>(group, x, t, y + t * stride, stride);
            for (; t <= t1 - 4; t += 4) KTokens4<Levels>(group, x, t, y + t * stride, stride);
            for (; t < t1; t++) KToken<Levels>(group, x, t).Store(y + t * stride);
        }
    }

    /// <summary>q4_0 or q8_0 (by <typeparamref name="TBlock"/>): per block, d·step·(exact Σ level·x).</summary>
    private static Vector256<float> BlockToken<TBlock>(byte* group, QuantisedActivations x, int t) where TBlock : struct, IBlock32<TBlock>
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t);
        int* levelSums = x.LevelSums(t);
        Vector256<float> acc = default;
        for (int b = 0; b < x.Columns / 32; b++, group += TBlock.GroupBytes)
        {
            Ahead(group, TBlock.GroupBytes);
            var d = Halves(group);
            acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(TBlock.Load(group + 16).Dot(xq + 32 * b, levelSums[b])), d * steps[b], acc);
        }
        return acc;
    }

    /// <summary>
    /// Eight tokens at once: each block's levels unpacked once for eight tokens, not four. Token k's record (values, then
    /// steps, sums and level sums) starts k records after token t's.
    /// </summary>
    private static void BlockTokens8<TBlock>(byte* group, QuantisedActivations x, int t, float* y, long stride) where TBlock : struct, IBlock32<TBlock>
    {
        byte* r0 = (byte*)x.Values(t);
        long record = (byte*)x.Values(t + 1) - r0;
        int steps = (int)((byte*)x.Steps(t) - r0), levelSums = (int)((byte*)x.LevelSums(t) - r0);
        byte* r4 = r0 + 4 * record;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int b = 0; b < x.Columns / 32; b++, group += TBlock.GroupBytes)
        {
            var d = Halves(group);
            var levels = TBlock.Load(group + 16);
            a0 = Token(levels, d, r0, b, steps, levelSums, a0);
            a1 = Token(levels, d, r0 + record, b, steps, levelSums, a1);
            a2 = Token(levels, d, r0 + 2 * record, b, steps, levelSums, a2);
            a3 = Token(levels, d, r0 + 3 * record, b, steps, levelSums, a3);
            a4 = Token(levels, d, r4, b, steps, levelSums, a4);
            a5 = Token(levels, d, r4 + record, b, steps, levelSums, a5);
            a6 = Token(levels, d, r4 + 2 * record, b, steps, levelSums, a6);
            a7 = Token(levels, d, r4 + 3 * record, b, steps, levelSums, a7);
        }
        a0.Store(y); a1.Store(y + stride); a2.Store(y + 2 * stride); a3.Store(y + 3 * stride);
        a4.Store(y + 4 * stride); a5.Store(y + 5 * stride); a6.Store(y + 6 * stride); a7.Store(y + 7 * stride);
    }

    /// <summary>One token's block b (its record at <paramref name="token"/>) added to <paramref name="acc"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token<TBlock>(TBlock levels, Vector256<float> d, byte* token, int b, int steps, int levelSums, Vector256<float> acc)
        where TBlock : struct, IBlock32<TBlock> =>
        Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(levels.Dot((sbyte*)token + 32 * b, ((int*)(token + levelSums))[b])), d * ((float*)(token + steps))[b], acc);

    /// <summary>
    /// q8_0 without VNNI, eight tokens at once: chunk by chunk (four levels of each row), the chunk's signed levels and
    /// their magnitudes taken once for the eight tokens — <see cref="Q8_0Block"/> takes them for every token, two of the
    /// six operations per chunk — so each token costs a sign, two multiply-adds and an add. The same integer sums and
    /// f32 operations per token as <see cref="BlockTokens8"/> (measured: q8_0 prefill 1.2–1.45× faster on a Zen 4 VM).
    /// </summary>
    private static void Q8_0Tokens8(byte* group, QuantisedActivations x, int t, float* y, long stride)
    {
        byte* r0 = (byte*)x.Values(t);
        long record = (byte*)x.Values(t + 1) - r0;
        float* steps = x.Steps(t);
        byte* r4 = r0 + 4 * record;
        var bias = Vector256.Create((byte)0x80);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int b = 0; b < x.Columns / 32; b++, group += InterleavedRows.Q8_0GroupBlockBytes)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            byte* chunks = group + 16;
            for (int k = 0; k < 8; k++)
            {
                var level = (Vector256.Load(chunks + 32 * k) ^ bias).AsSByte();
                var magnitude = Avx2.Abs(level);
                byte* x0 = r0 + 32 * b + 4 * k, x4 = r4 + 32 * b + 4 * k;
                s0 += SignedProducts(magnitude, level, x0);
                s1 += SignedProducts(magnitude, level, x0 + record);
                s2 += SignedProducts(magnitude, level, x0 + 2 * record);
                s3 += SignedProducts(magnitude, level, x0 + 3 * record);
                s4 += SignedProducts(magnitude, level, x4);
                s5 += SignedProducts(magnitude, level, x4 + record);
                s6 += SignedProducts(magnitude, level, x4 + 2 * record);
                s7 += SignedProducts(magnitude, level, x4 + 3 * record);
            }
            var d = Halves(group);
            a0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s0), d * Step(steps, b, 0 * record), a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s1), d * Step(steps, b, 1 * record), a1);
            a2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s2), d * Step(steps, b, 2 * record), a2);
            a3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s3), d * Step(steps, b, 3 * record), a3);
            a4 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s4), d * Step(steps, b, 4 * record), a4);
            a5 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s5), d * Step(steps, b, 5 * record), a5);
            a6 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s6), d * Step(steps, b, 6 * record), a6);
            a7 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(s7), d * Step(steps, b, 7 * record), a7);
        }
        a0.Store(y); a1.Store(y + stride); a2.Store(y + 2 * stride); a3.Store(y + 3 * stride);
        a4.Store(y + 4 * stride); a5.Store(y + 5 * stride); a6.Store(y + 6 * stride); a7.Store(y + 7 * stride);
    }

    /// <summary>Block <paramref name="b"/>'s step of the token whose record starts <paramref name="offset"/> bytes after the first's.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Step(float* first, int b, long offset) => ((float*)((byte*)first + offset))[b];

    /// <summary>Four levels of each of eight rows times a token's four activation levels at <paramref name="x"/>, summed per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SignedProducts(Vector256<byte> magnitude, Vector256<sbyte> level, byte* x) =>
        Widen(Avx2.MultiplyAddAdjacent(magnitude, Avx2.Sign(Broadcast((sbyte*)x), level)));

    /// <summary>Four tokens at once (the remainder after eight-token tiles), as <see cref="BlockTokens8"/>.</summary>
    private static void BlockTokens4<TBlock>(byte* group, QuantisedActivations x, int t, float* y, long stride) where TBlock : struct, IBlock32<TBlock>
    {
        byte* r0 = (byte*)x.Values(t);
        long record = (byte*)x.Values(t + 1) - r0;
        int steps = (int)((byte*)x.Steps(t) - r0), levelSums = (int)((byte*)x.LevelSums(t) - r0);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int b = 0; b < x.Columns / 32; b++, group += TBlock.GroupBytes)
        {
            var d = Halves(group);
            var levels = TBlock.Load(group + 16);
            a0 = Token(levels, d, r0, b, steps, levelSums, a0);
            a1 = Token(levels, d, r0 + record, b, steps, levelSums, a1);
            a2 = Token(levels, d, r0 + 2 * record, b, steps, levelSums, a2);
            a3 = Token(levels, d, r0 + 3 * record, b, steps, levelSums, a3);
        }
        a0.Store(y); a1.Store(y + stride); a2.Store(y + 2 * stride); a3.Store(y + 3 * stride);
    }

    /// <summary>A 32-value block of eight interleaved rows behind eight f16 d: its rows' exact Σ level·x.</summary>
    private interface IBlock32<TSelf> where TSelf : struct, IBlock32<TSelf>
    {
        /// <summary>Bytes of one group block (the d values and the levels).</summary>
        static abstract int GroupBytes { get; }
        static abstract TSelf Load(byte* levels);
        /// <summary>Σ value·x per row, given the activation levels' sum <paramref name="levelSum"/> for the formats' offsets.</summary>
        Vector256<int> Dot(sbyte* x, int levelSum);
    }

    /// <summary>q4_0: levels 0–15 standing for level − 8, the 8 taken off in integers.</summary>
    private readonly struct Q4_0Block(Levels levels) : IBlock32<Q4_0Block>
    {
        public static int GroupBytes => InterleavedRows.Q4_0GroupBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q4_0Block Load(byte* block) => new(new Levels(block));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Dot(sbyte* x, int levelSum) => levels.Dot(x) - Vector256.Create(8 * levelSum);
    }

    /// <summary>q8_0: levels stored + 128 (<see cref="Bytes8"/>).</summary>
    private readonly struct Q8_0Block(IntPtr block) : IBlock32<Q8_0Block>
    {
        public static int GroupBytes => InterleavedRows.Q8_0GroupBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q8_0Block Load(byte* block) => new((IntPtr)block);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Dot(sbyte* x, int levelSum) => Bytes8.Dot((byte*)block, x, levelSum);
    }

    private static Vector256<float> Q6_KToken(byte* group, QuantisedActivations x, int t)
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t), sums = x.Sums(t);
        Vector256<float> acc = default, offset = default;
        for (int s = 0; s < x.Columns / 256; s++, group += InterleavedRows.Q6_KGroupBlockBytes)
        {
            var d = Halves(group);
            for (int j = 0; j < 8; j++)
            {
                byte* at = group + InterleavedRows.Q6_KLevelsOffset + InterleavedRows.Q6_KBlockBytes * j;
                Ahead(at, InterleavedRows.Q6_KBlockBytes);
                var (lower, upper) = Q6Scales(group, j, d);
                var levels = new Levels6(at);
                int b = 8 * s + j;
                var (dotLower, dotUpper) = levels.Dot(xq + 32 * b);
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dotLower), lower * steps[b], acc);
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(dotUpper), upper * steps[b], acc);
                offset = Vector256.FusedMultiplyAdd(lower, Vector256.Create(sums[2 * b]), offset);
                offset = Vector256.FusedMultiplyAdd(upper, Vector256.Create(sums[2 * b + 1]), offset);
            }
        }
        return acc - offset * 32;
    }

    private static void Q6_KTokens4(byte* group, QuantisedActivations x, int t, float* y, long stride)
    {
        // Each token sees Q6_KToken's operations in its order; written out per token so the sums stay in registers.
        sbyte* x0 = x.Values(t), x1 = x.Values(t + 1), x2 = x.Values(t + 2), x3 = x.Values(t + 3);
        float* st0 = x.Steps(t), st1 = x.Steps(t + 1), st2 = x.Steps(t + 2), st3 = x.Steps(t + 3);
        float* su0 = x.Sums(t), su1 = x.Sums(t + 1), su2 = x.Sums(t + 2), su3 = x.Sums(t + 3);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, o0 = default, o1 = default, o2 = default, o3 = default;
        for (int s = 0; s < x.Columns / 256; s++, group += InterleavedRows.Q6_KGroupBlockBytes)
        {
            var d = Halves(group);
            for (int j = 0; j < 8; j++)
            {
                var (lower, upper) = Q6Scales(group, j, d);
                var levels = new Levels6(group + InterleavedRows.Q6_KLevelsOffset + InterleavedRows.Q6_KBlockBytes * j);
                int b = 8 * s + j, at = 32 * b;
                var (l0, u0) = levels.Dot(x0 + at);
                a0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(l0), lower * st0[b], a0);
                a0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(u0), upper * st0[b], a0);
                o0 = Vector256.FusedMultiplyAdd(lower, Vector256.Create(su0[2 * b]), o0);
                o0 = Vector256.FusedMultiplyAdd(upper, Vector256.Create(su0[2 * b + 1]), o0);
                var (l1, u1) = levels.Dot(x1 + at);
                a1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(l1), lower * st1[b], a1);
                a1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(u1), upper * st1[b], a1);
                o1 = Vector256.FusedMultiplyAdd(lower, Vector256.Create(su1[2 * b]), o1);
                o1 = Vector256.FusedMultiplyAdd(upper, Vector256.Create(su1[2 * b + 1]), o1);
                var (l2, u2) = levels.Dot(x2 + at);
                a2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(l2), lower * st2[b], a2);
                a2 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(u2), upper * st2[b], a2);
                o2 = Vector256.FusedMultiplyAdd(lower, Vector256.Create(su2[2 * b]), o2);
                o2 = Vector256.FusedMultiplyAdd(upper, Vector256.Create(su2[2 * b + 1]), o2);
                var (l3, u3) = levels.Dot(x3 + at);
                a3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(l3), lower * st3[b], a3);
                a3 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(u3), upper * st3[b], a3);
                o3 = Vector256.FusedMultiplyAdd(lower, Vector256.Create(su3[2 * b]), o3);
                o3 = Vector256.FusedMultiplyAdd(upper, Vector256.Create(su3[2 * b + 1]), o3);
            }
        }
        (a0 - o0 * 32).Store(y); (a1 - o1 * 32).Store(y + stride); (a2 - o2 * 32).Store(y + 2 * stride); (a3 - o3 * 32).Store(y + 3 * stride);
    }

    /// <summary>Block <paramref name="j"/>'s two 16-value sub-blocks' scales for the eight rows, times d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float> Lower, Vector256<float> Upper) Q6Scales(byte* group, int j, Vector256<float> d)
    {
        byte* scales = group + InterleavedRows.Q6_KScalesOffset + 16 * j;
        return (d * Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(Vector128.CreateScalar(*(long*)scales).AsSByte())),
                d * Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(Vector128.CreateScalar(*(long*)(scales + 8)).AsSByte())));
    }

    /// <summary>q4_K or q5_K (by <typeparamref name="TLevels"/>): per sub-block, d·scale·step·(levels·x) − dmin·min·Σx.</summary>
    private static Vector256<float> KToken<TLevels>(byte* group, QuantisedActivations x, int t) where TLevels : struct, ILevelBlock<TLevels>
    {
        sbyte* xq = x.Values(t);
        float* steps = x.Steps(t);
        int* levelSums = x.LevelSums(t);
        Vector256<float> acc = default, offset = default;
        for (int s = 0; s < x.Columns / 256; s++, group += TLevels.GroupBytes)
        {
            var d = Halves(group);
            var dMin = Halves(group + InterleavedRows.Q4_KMinScalesOffset);
            for (int j = 0; j < 8; j++)
            {
                Ahead(group + TLevels.GroupBytes / 8 * j, TLevels.GroupBytes / 8);
                var (scale, min) = SubBlockScales(group, j, d, dMin);
                var levels = TLevels.Load(group + InterleavedRows.Q4_KLevelsOffset + TLevels.BlockBytes * j);
                int b = 8 * s + j;
                acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(levels.Dot(xq + 32 * b)), scale * steps[b], acc);
                offset = Vector256.FusedMultiplyAdd(min, Vector256.Create(levelSums[b] * steps[b]), offset);
            }
        }
        return acc - offset;
    }

    /// <summary>Eight tokens at once (see <see cref="BlockTokens8"/>): per sub-block, d·scale·step·(levels·x) − dmin·min·step·Σlevels.</summary>
    private static void KTokens8<TLevels>(byte* group, QuantisedActivations x, int t, float* y, long stride) where TLevels : struct, ILevelBlock<TLevels>
    {
        byte* r0 = (byte*)x.Values(t);
        long record = (byte*)x.Values(t + 1) - r0;
        int steps = (int)((byte*)x.Steps(t) - r0), levelSums = (int)((byte*)x.LevelSums(t) - r0);
        byte* r4 = r0 + 4 * record;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector256<float> o0 = default, o1 = default, o2 = default, o3 = default, o4 = default, o5 = default, o6 = default, o7 = default;
        for (int s = 0; s < x.Columns / 256; s++, group += TLevels.GroupBytes)
        {
            var d = Halves(group);
            var dMin = Halves(group + InterleavedRows.Q4_KMinScalesOffset);
            for (int j = 0; j < 8; j++)
            {
                var (scale, min) = SubBlockScales(group, j, d, dMin);
                var levels = TLevels.Load(group + InterleavedRows.Q4_KLevelsOffset + TLevels.BlockBytes * j);
                int b = 8 * s + j;
                KSubBlock(levels, scale, min, r0, b, steps, levelSums, ref a0, ref o0);
                KSubBlock(levels, scale, min, r0 + record, b, steps, levelSums, ref a1, ref o1);
                KSubBlock(levels, scale, min, r0 + 2 * record, b, steps, levelSums, ref a2, ref o2);
                KSubBlock(levels, scale, min, r0 + 3 * record, b, steps, levelSums, ref a3, ref o3);
                KSubBlock(levels, scale, min, r4, b, steps, levelSums, ref a4, ref o4);
                KSubBlock(levels, scale, min, r4 + record, b, steps, levelSums, ref a5, ref o5);
                KSubBlock(levels, scale, min, r4 + 2 * record, b, steps, levelSums, ref a6, ref o6);
                KSubBlock(levels, scale, min, r4 + 3 * record, b, steps, levelSums, ref a7, ref o7);
            }
        }
        (a0 - o0).Store(y); (a1 - o1).Store(y + stride); (a2 - o2).Store(y + 2 * stride); (a3 - o3).Store(y + 3 * stride);
        (a4 - o4).Store(y + 4 * stride); (a5 - o5).Store(y + 5 * stride); (a6 - o6).Store(y + 6 * stride); (a7 - o7).Store(y + 7 * stride);
    }

    /// <summary>
    /// One token's sub-block b (its record at <paramref name="token"/>): the scaled dot into <paramref name="acc"/>, the
    /// min's share into <paramref name="offset"/> — the arithmetic of <see cref="KToken"/>, so a token gets the same bits
    /// in any tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void KSubBlock<TLevels>(TLevels levels, Vector256<float> scale, Vector256<float> min, byte* token, int b, int steps, int levelSums,
        ref Vector256<float> acc, ref Vector256<float> offset) where TLevels : struct, ILevelBlock<TLevels>
    {
        float step = ((float*)(token + steps))[b];
        acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(levels.Dot((sbyte*)token + 32 * b)), scale * step, acc);
        offset = Vector256.FusedMultiplyAdd(min, Vector256.Create(((int*)(token + levelSums))[b] * step), offset);
    }

    /// <summary>Four tokens at once (the remainder after eight-token tiles), as <see cref="KTokens8"/>.</summary>
    private static void KTokens4<TLevels>(byte* group, QuantisedActivations x, int t, float* y, long stride) where TLevels : struct, ILevelBlock<TLevels>
    {
        byte* r0 = (byte*)x.Values(t);
        long record = (byte*)x.Values(t + 1) - r0;
        int steps = (int)((byte*)x.Steps(t) - r0), levelSums = (int)((byte*)x.LevelSums(t) - r0);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, o0 = default, o1 = default, o2 = default, o3 = default;
        for (int s = 0; s < x.Columns / 256; s++, group += TLevels.GroupBytes)
        {
            var d = Halves(group);
            var dMin = Halves(group + InterleavedRows.Q4_KMinScalesOffset);
            for (int j = 0; j < 8; j++)
            {
                var (scale, min) = SubBlockScales(group, j, d, dMin);
                var levels = TLevels.Load(group + InterleavedRows.Q4_KLevelsOffset + TLevels.BlockBytes * j);
                int b = 8 * s + j;
                KSubBlock(levels, scale, min, r0, b, steps, levelSums, ref a0, ref o0);
                KSubBlock(levels, scale, min, r0 + record, b, steps, levelSums, ref a1, ref o1);
                KSubBlock(levels, scale, min, r0 + 2 * record, b, steps, levelSums, ref a2, ref o2);
                KSubBlock(levels, scale, min, r0 + 3 * record, b, steps, levelSums, ref a3, ref o3);
            }
        }
        (a0 - o0).Store(y); (a1 - o1).Store(y + stride); (a2 - o2).Store(y + 2 * stride); (a3 - o3).Store(y + 3 * stride);
    }

    /// <summary>
    /// How far ahead (bytes) a one-token pass asks for weights, a few lines with every block: spread over the work, this
    /// took the Llama-3.2-1B-shape q4_K matrices from 31-35 to 41-45 GB/s on the 2-core VM, where one burst per group of
    /// eight rows (as the other GEMVs do) left them at 31-35 and none at 23; 1 KB and 6-16 KB ahead measured slower.
    /// </summary>
    private const int PrefetchDistance = 3072;

    /// <summary>Asks for the bytes <see cref="PrefetchDistance"/> past [<paramref name="p"/>, p + <paramref name="bytes"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Ahead(byte* p, int bytes) => MatMul.Prefetch(p + PrefetchDistance, bytes);

    /// <summary>Sub-block <paramref name="j"/>'s eight rows' d·scale and dmin·min.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<float> Scale, Vector256<float> Min) SubBlockScales(byte* group, int j, Vector256<float> d, Vector256<float> dMin) =>
        (d * Vector256.ConvertToSingle(Bytes(group + InterleavedRows.Q4_KScalesOffset + 8 * j)),
         dMin * Vector256.ConvertToSingle(Bytes(group + InterleavedRows.Q4_KMinsOffset + 8 * j)));

    /// <summary>Eight bytes widened to int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Bytes(byte* p) => Avx2.ConvertToVector256Int32(Vector128.CreateScalar(*(long*)p).AsByte());

    /// <summary>The eight f16 values at <paramref name="p"/> (finite: checked at load).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Halves(byte* p) => Dot.HalvesToSingle(Vector128.Load((ushort*)p));

    /// <summary>An interleaved q8_0 block of eight rows (eight 32-byte chunks of levels + 128) against 32 activation levels.</summary>
    private static class Bytes8
    {
        /// <summary>
        /// The eight rows' exact Σ level·x: with VNNI, Σ (level + 128)·x less 128·Σx (<paramref name="levelSum"/>); with
        /// AVX2 alone, |level| times x carrying level's sign (<c>vpsignb</c>), which <c>vpmaddubsw</c> cannot saturate.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(byte* chunks, sbyte* x, int levelSum)
        {
            if (AvxVnni.IsSupported)
            {
                var s0 = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Load(chunks), Broadcast(x));
                var s1 = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Load(chunks + 32), Broadcast(x + 4));
                for (int k = 2; k < 8; k += 2)
                {
                    s0 = AvxVnni.MultiplyWideningAndAdd(s0, Vector256.Load(chunks + 32 * k), Broadcast(x + 4 * k));
                    s1 = AvxVnni.MultiplyWideningAndAdd(s1, Vector256.Load(chunks + 32 * k + 32), Broadcast(x + 4 * k + 4));
                }
                return s0 + s1 - Vector256.Create(128 * levelSum);
            }
            var sum = Vector256<int>.Zero;
            for (int k = 0; k < 8; k++)
            {
                var level = (Vector256.Load(chunks + 32 * k) ^ Vector256.Create((byte)0x80)).AsSByte();
                var products = Avx2.MultiplyAddAdjacent(Avx2.Abs(level), Avx2.Sign(Broadcast(x + 4 * k), level));
                sum += Avx2.MultiplyAddAdjacent(products, Vector256.Create((short)1));
            }
            return sum;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Broadcast(sbyte* x) => Vector256.Create(*(int*)x).AsSByte();

    /// <summary>One interleaved q6_K 32-value block of eight rows, unpacked once: nibbles joined with their high bit pairs.</summary>
    private readonly struct Levels6
    {
        private readonly Vector256<byte> _l0, _l1, _l2, _l3, _h0, _h1, _h2, _h3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Levels6(byte* block)
        {
            var mask = Vector256.Create((byte)0xF);
            var pair = Vector256.Create((byte)0x30);
            var c0 = Vector256.Load(block); var c1 = Vector256.Load(block + 32);
            var c2 = Vector256.Load(block + 64); var c3 = Vector256.Load(block + 96);
            var lowBits = Vector256.Load(block + 128).AsUInt16();
            var highBits = Vector256.Load(block + 160).AsUInt16();
            // Chunk k's high pair sits in bits 2k..2k+1: moved to bits 4..5 (16-bit shifts, masked within each byte).
            _l0 = (c0 & mask) | ((lowBits << 4).AsByte() & pair);
            _l1 = (c1 & mask) | ((lowBits << 2).AsByte() & pair);
            _l2 = (c2 & mask) | (lowBits.AsByte() & pair);
            _l3 = (c3 & mask) | ((lowBits >> 2).AsByte() & pair);
            _h0 = ((c0.AsUInt16() >> 4).AsByte() & mask) | ((highBits << 4).AsByte() & pair);
            _h1 = ((c1.AsUInt16() >> 4).AsByte() & mask) | ((highBits << 2).AsByte() & pair);
            _h2 = ((c2.AsUInt16() >> 4).AsByte() & mask) | (highBits.AsByte() & pair);
            _h3 = ((c3.AsUInt16() >> 4).AsByte() & mask) | ((highBits >> 2).AsByte() & pair);
        }

        /// <summary>
        /// The eight rows' Σ level·x over values 0–15 and 16–31 of the block at <paramref name="x"/>. Without VNNI,
        /// products add in int16 two at a time (|Σ| ≤ 2·2·63·128 = 32,256) before widening.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public (Vector256<int> Lower, Vector256<int> Upper) Dot(sbyte* x)
        {
            if (!AvxVnni.IsSupported)
                return (Widen(Pairs(_l0, x) + Pairs(_l1, x + 4)) + Widen(Pairs(_l2, x + 8) + Pairs(_l3, x + 12)),
                        Widen(Pairs(_h0, x + 16) + Pairs(_h1, x + 20)) + Widen(Pairs(_h2, x + 24) + Pairs(_h3, x + 28)));
            var lower = Add(Add(Add(Add(Vector256<int>.Zero, _l0, Broadcast(x)), _l1, Broadcast(x + 4)), _l2, Broadcast(x + 8)), _l3, Broadcast(x + 12));
            var upper = Add(Add(Add(Add(Vector256<int>.Zero, _h0, Broadcast(x + 16)), _h1, Broadcast(x + 20)), _h2, Broadcast(x + 24)), _h3, Broadcast(x + 28));
            return (lower, upper);
        }
    }

    /// <summary>Adjacent pairs of levels × x as int16 (<c>vpmaddubsw</c>): at most 2·63·128 in magnitude for 6-bit levels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> Pairs(Vector256<byte> levels, sbyte* x) => Avx2.MultiplyAddAdjacent(levels, Broadcast(x));

    /// <summary>Adjacent int16 pairs summed into int32 lanes (<c>vpmaddwd</c> by ones).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Widen(Vector256<short> pairs) => Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1));

    /// <summary>Σ += levels · x per 32-bit lane (four products each).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Add(Vector256<int> sum, Vector256<byte> levels, Vector256<sbyte> x) => BlockDot.MultiplyAdd(sum, levels, x);

    /// <summary>An interleaved 32-value block of eight rows' levels, unpacked once, and the k-quant group it sits in.</summary>
    private interface ILevelBlock<TSelf> where TSelf : struct, ILevelBlock<TSelf>
    {
        /// <summary>Bytes of one 32-value block of eight rows.</summary>
        static abstract int BlockBytes { get; }
        /// <summary>Bytes of one group super-block (k-quants).</summary>
        static abstract int GroupBytes { get; }
        static abstract TSelf Load(byte* block);
        Vector256<int> Dot(sbyte* x);
    }

    /// <summary>A q5_K block: q4's nibbles with each value's fifth bit (bit k / 4+k of byte 4i+c) as bit 4.</summary>
    private readonly struct Levels5 : ILevelBlock<Levels5>
    {
        private readonly Levels _levels;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private Levels5(byte* block) => _levels = new Levels(block, Vector256.Load(block + 128).AsUInt16());

        public static int BlockBytes => InterleavedRows.Q5_KBlockBytes;
        public static int GroupBytes => InterleavedRows.Q5_KGroupBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Levels5 Load(byte* block) => new(block);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Dot(sbyte* x) => _levels.DotFiveBit(x);
    }

    /// <summary>One interleaved 32-value block of eight rows, unpacked once: chunk k's low and high nibbles.</summary>
    private readonly struct Levels : ILevelBlock<Levels>
    {
        private readonly Vector256<byte> _l0, _l1, _l2, _l3, _h0, _h1, _h2, _h3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Levels(byte* block)
        {
            var mask = Vector256.Create((byte)0xF);
            var c0 = Vector256.Load(block); var c1 = Vector256.Load(block + 32);
            var c2 = Vector256.Load(block + 64); var c3 = Vector256.Load(block + 96);
            _l0 = c0 & mask; _l1 = c1 & mask; _l2 = c2 & mask; _l3 = c3 & mask;
            _h0 = (c0.AsUInt16() >> 4).AsByte() & mask; _h1 = (c1.AsUInt16() >> 4).AsByte() & mask;
            _h2 = (c2.AsUInt16() >> 4).AsByte() & mask; _h3 = (c3.AsUInt16() >> 4).AsByte() & mask;
        }

        /// <summary>Nibbles joined with fifth bits: bit k of each byte for chunk k's low nibbles, bit 4+k for its high ones.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Levels(byte* block, Vector256<ushort> fifth) : this(block)
        {
            var bit = Vector256.Create((byte)0x10);
            // 16-bit shifts, masked to bit 4 of each byte: no bit crosses into the other byte of a lane.
            _l0 |= (fifth << 4).AsByte() & bit; _l1 |= (fifth << 3).AsByte() & bit;
            _l2 |= (fifth << 2).AsByte() & bit; _l3 |= (fifth << 1).AsByte() & bit;
            _h0 |= fifth.AsByte() & bit; _h1 |= (fifth >> 1).AsByte() & bit;
            _h2 |= (fifth >> 2).AsByte() & bit; _h3 |= (fifth >> 3).AsByte() & bit;
        }

        public static int BlockBytes => 128;
        public static int GroupBytes => InterleavedRows.Q4_KGroupBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Levels Load(byte* block) => new(block);

        /// <summary>
        /// The eight rows' Σ level·x over the block's 32 values at <paramref name="x"/> (levels below 16; two independent
        /// chains with VNNI). Without it the eight <c>vpmaddubsw</c> products add in int16 — |Σ| ≤ 8·2·15·128 = 30,720 —
        /// and widen once: 9 multiplies instead of 16, the port the loop waits on.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Dot(sbyte* x)
        {
            if (!AvxVnni.IsSupported)
                return Widen(Pairs(_l0, x) + Pairs(_l1, x + 4) + Pairs(_l2, x + 8) + Pairs(_l3, x + 12)
                             + Pairs(_h0, x + 16) + Pairs(_h1, x + 20) + Pairs(_h2, x + 24) + Pairs(_h3, x + 28));
            var s0 = Add(Vector256<int>.Zero, _l0, Broadcast(x));
            var s1 = Add(Vector256<int>.Zero, _h0, Broadcast(x + 16));
            s0 = Add(s0, _l1, Broadcast(x + 4));
            s1 = Add(s1, _h1, Broadcast(x + 20));
            s0 = Add(s0, _l2, Broadcast(x + 8));
            s1 = Add(s1, _h2, Broadcast(x + 24));
            s0 = Add(s0, _l3, Broadcast(x + 12));
            s1 = Add(s1, _h3, Broadcast(x + 28));
            return s0 + s1;
        }

        /// <summary>
        /// <see cref="Dot"/> for levels below 32 (q5_K): without VNNI, int16 sums of four products — |Σ| ≤ 4·2·31·128 =
        /// 31,744 — widened twice.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> DotFiveBit(sbyte* x) => AvxVnni.IsSupported
            ? Dot(x)
            : Widen(Pairs(_l0, x) + Pairs(_l1, x + 4) + Pairs(_l2, x + 8) + Pairs(_l3, x + 12))
              + Widen(Pairs(_h0, x + 16) + Pairs(_h1, x + 20) + Pairs(_h2, x + 24) + Pairs(_h3, x + 28));
    }
}
