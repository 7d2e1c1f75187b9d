using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Numerics.Tensors;

namespace KvPacket.Compute.Sampling;

/// <summary>
/// One token to choose from one row of logits: the argmax (<see cref="Temperature"/> 0), or a draw at a temperature
/// from the <see cref="TopK"/> most likely tokens cut to the smallest most-likely set whose probability reaches
/// <see cref="TopP"/>, using the 64 random <see cref="Bits"/>. The same rule runs here (<see cref="Choose"/>) and on the
/// GPU (<c>token_draw.cu</c>, same layout: 24 bytes), in O(vocabulary) without sorting:
/// <list type="number">
/// <item>weights w = ⌊exp((x − max) · (1/T)) · 2⁴⁰⌋ as integers (1/T rounded to float once), so every sum is exact and
/// independent of order;</item>
/// <item>top-k: the k-th largest logit τ found by a radix select over the logits' order-preserving bit patterns (digits
/// of 11, 11 and 10 bits, counts); ties at τ are kept lowest id first until k are kept;</item>
/// <item>top-p: the same select by weight within what top-k kept: τ is the logit at which the descending cumulative weight
/// first reaches ⌊p · Σw⌋ (the probability mass over the whole vocabulary, as the sorted definition has it), and only as
/// many ties at τ as that takes; when top-k's set weighs less than that, top-k's set stays;</item>
/// <item>the draw: the ticket ⌊bits · W / 2⁶⁴⌋ for the kept weight W, walked in id order.</item>
/// </list>
/// Ties therefore break toward the lowest id everywhere, as the argmax does.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct TokenDraw(float Temperature, int TopK, float TopP, ulong Bits)
{
    /// <summary>The argmax, lowest id on ties.</summary>
    public static TokenDraw Greedy => new(0, 0, 1, 0);

    /// <summary>Whether this is the argmax.</summary>
    public bool IsGreedy => Temperature == 0;

    /// <summary>Whether every one of <paramref name="draws"/> is the argmax (a backend's one-pass kernel then serves them).</summary>
    public static bool AllGreedy(ReadOnlySpan<TokenDraw> draws)
    {
        foreach (var draw in draws)
            if (!draw.IsGreedy) return false;
        return true;
    }

    /// <summary>One weight unit: the most likely token weighs exactly 2⁴⁰, so a vocabulary of up to 2¹⁸ tokens sums below 2⁵⁸.</summary>
    private const float WeightScale = 1099511627776f;

    /// <summary>
    /// What <see cref="Choose"/> works in, for rows of up to <paramref name="vocabSize"/> logits: made once, reused by every
    /// draw; its buffers are made by the first draw that is not the argmax (which needs none).
    /// </summary>
    public sealed class Scratch(int vocabSize)
    {
        private float[]? _exponentials;
        private int[]? _candidates;
        private (ulong Before, long TiesBefore)[]? _stretches;

        internal float[] Exponentials => _exponentials ??= new float[vocabSize];   // exp((x − max) · (1/T)) per id
        internal int[] Candidates => _candidates ??= new int[vocabSize];          // ids a radix select still considers
        internal (ulong Before, long TiesBefore)[] Stretches => _stretches ??= new (ulong, long)[(vocabSize + StretchLength - 1) / StretchLength];
    }

    /// <summary>Ids per stretch of the draw's walk.</summary>
    private const int StretchLength = 1024;

    /// <summary>The chosen token id of <paramref name="logits"/> (not modified), working in <paramref name="scratch"/>. Allocates nothing.</summary>
    [SkipLocalsInit]
    public int Choose(ReadOnlySpan<float> logits, Scratch scratch)
    {
        if (IsGreedy) return TensorPrimitives.IndexOfMax(logits);
        int n = logits.Length;
        var e = scratch.Exponentials.AsSpan(0, n);
        TensorPrimitives.Subtract(logits, TensorPrimitives.Max(logits), e);
        TensorPrimitives.Multiply(e, 1f / Temperature, e);
        TensorPrimitives.Exp(e, e);

        // (threshold, ties): every token whose key is above the threshold, and the first `ties` (by id) whose key equals it.
        uint threshold = 0;
        long ties = n;
        if (TopK > 0 && TopK < n) threshold = Select(logits, e, scratch.Candidates, byWeight: false, floor: 0, (ulong)TopK, out ties, out _);
        if (TopP < 1)
        {
            ulong total = 0;
            for (int i = 0; i < n; i++) total += WeightOf(e[i]);
            uint cut = Select(logits, e, scratch.Candidates, byWeight: true, floor: threshold, MassTarget(TopP, total), out long remaining, out int tie);
            if (remaining >= 0)
            {
                ulong weight = WeightOf(e[tie]);
                long need = (long)(((ulong)remaining + weight - 1) / weight);
                if (cut != threshold || need <= ties) (threshold, ties) = (cut, need);
            }
        }

        // The kept weight, and each stretch's share of it and the ties before it: the walk then skips whole stretches.
        var stretches = scratch.Stretches.AsSpan(0, (n + StretchLength - 1) / StretchLength);
        ulong kept = 0;
        long seen = 0;
        for (int s = 0; s < stretches.Length; s++)
        {
            stretches[s] = (kept, seen);
            for (int i = s * StretchLength, end = Math.Min(n, i + StretchLength); i < end; i++)
            {
                uint key = KeyOf(logits[i]);
                if (key > threshold || (key == threshold && seen++ < ties)) kept += WeightOf(e[i]);
            }
        }
        ulong ticket = Math.BigMul(Bits, kept, out _);
        int stretch = stretches.Length - 1;
        while (stretches[stretch].Before > ticket) stretch--;
        (ulong cumulative, seen) = stretches[stretch];
        for (int i = stretch * StretchLength; i < n; i++)
        {
            uint key = KeyOf(logits[i]);
            if (key > threshold || (key == threshold && seen++ < ties))
            {
                cumulative += WeightOf(e[i]);
                if (cumulative > ticket) return i;
            }
        }
        throw new InvalidOperationException("The draw's ticket passed the kept weight: the logits changed while drawing.");
    }

    /// <summary>
    /// Radix select over the keys at or above <paramref name="floor"/>, from the top, in digits of 11, 11 and 10 bits: the
    /// key at which the descending running count (or weight) first reaches <paramref name="target"/>. The first digit
    /// looks at every id; the ids in its chosen bin are gathered into <paramref name="candidates"/>, and only they are
    /// looked at after. <paramref name="remaining"/> is what is still to take at that key (≥ 1), or −1 when everything at
    /// or above the floor totals less than the target; <paramref name="tie"/> is an id with that key.
    /// </summary>
    [SkipLocalsInit]
    private static uint Select(ReadOnlySpan<float> logits, ReadOnlySpan<float> exponentials, int[] candidates, bool byWeight, uint floor, ulong target,
        out long remaining, out int tie)
    {
        Span<ulong> histogram = stackalloc ulong[2048];
        histogram.Clear();
        for (int i = 0; i < logits.Length; i++)
        {
            uint key = KeyOf(logits[i]);
            if (key >= floor) histogram[(int)(key >> 21)] += byWeight ? WeightOf(exponentials[i]) : 1;
        }
        int digit = Crossing(histogram, ref target);
        tie = -1;
        if (digit < 0) { remaining = -1; return floor; }
        uint prefix = (uint)digit << 21;
        int count = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            uint key = KeyOf(logits[i]);
            if (key >> 21 == (uint)digit && key >= floor) candidates[count++] = i;
        }
        foreach (var (shift, bins) in (ReadOnlySpan<(int, int)>)[(10, 2048), (0, 1024)])
        {
            var bin = histogram[..bins];
            bin.Clear();
            for (int c = 0; c < count; c++)
            {
                int i = candidates[c];
                bin[(int)(KeyOf(logits[i]) >> shift) & (bins - 1)] += byWeight ? WeightOf(exponentials[i]) : 1;
            }
            prefix |= (uint)Crossing(bin, ref target) << shift;
            uint mask = ~0u << shift;
            int kept = 0;
            for (int c = 0; c < count; c++)
                if ((KeyOf(logits[candidates[c]]) & mask) == prefix) candidates[kept++] = candidates[c];
            count = kept;
        }
        tie = candidates[0];
        remaining = (long)target;
        return prefix;
    }

    /// <summary>The highest bin at which the running total from the top reaches <paramref name="target"/>, which loses what lies above it; −1 when none does.</summary>
    private static int Crossing(ReadOnlySpan<ulong> histogram, ref ulong target)
    {
        ulong above = 0;
        for (int digit = histogram.Length - 1; digit >= 0; digit--)
        {
            if (above + histogram[digit] >= target)
            {
                target -= above;
                return digit;
            }
            above += histogram[digit];
        }
        return -1;
    }

    /// <summary>⌊p · total⌋ in float64 (the GPU does the same operation), at least 1.</summary>
    internal static ulong MassTarget(float topP, ulong total) => Math.Max(1, (ulong)((double)topP * total));

    /// <summary>A token's weight from its exp((x − max) · (1/T)): ⌊e · 2⁴⁰⌋ (through a signed conversion, one instruction: e ≤ 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong WeightOf(float exponential) => (ulong)(long)(exponential * WeightScale);

    /// <summary>The float's bits mapped so that unsigned order is the floats' order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint KeyOf(float x)
    {
        // Negative: all bits flipped; positive: the sign bit set. Without a branch: signs of logits are a coin toss.
        uint bits = BitConverter.SingleToUInt32Bits(x);
        return bits ^ ((uint)((int)bits >> 31) | 0x8000_0000u);
    }
}
