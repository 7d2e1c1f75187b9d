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
/// <item>top-k: the k-th largest logit τ found by a radix select over the logits' order-preserving bit patterns (four
/// 8-bit digits, counts); ties at τ are kept lowest id first until k are kept;</item>
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

    /// <summary>One weight unit: the most likely token weighs exactly 2⁴⁰, so a vocabulary of up to 2¹⁸ tokens sums below 2⁵⁸.</summary>
    private const float WeightScale = 1099511627776f;

    /// <summary>
    /// The chosen token id of <paramref name="logits"/> (not modified); <paramref name="weights"/> is scratch of at least
    /// the row's length. Allocates nothing.
    /// </summary>
    [SkipLocalsInit]
    public int Choose(ReadOnlySpan<float> logits, Span<ulong> weights)
    {
        if (IsGreedy) return TensorPrimitives.IndexOfMax(logits);
        int n = logits.Length;
        weights = weights[..n];
        float max = TensorPrimitives.Max(logits), inverse = 1f / Temperature;
        for (int i = 0; i < n; i++) weights[i] = Weight(logits[i], max, inverse);

        // (threshold, ties): every token whose key is above the threshold, and the first `ties` (by id) whose key equals it.
        uint threshold = 0;
        long ties = n;
        Span<ulong> histogram = stackalloc ulong[256];
        if (TopK > 0 && TopK < n) threshold = Select(logits, weights, histogram, byWeight: false, floor: 0, (ulong)TopK, out ties);
        if (TopP < 1)
        {
            ulong total = 0;
            for (int i = 0; i < n; i++) total += weights[i];
            ulong target = MassTarget(TopP, total);
            uint cut = Select(logits, weights, histogram, byWeight: true, floor: threshold, target, out long remaining);
            if (remaining >= 0)
            {
                ulong tie = Weight(ValueOf(cut), max, inverse);
                long need = (long)(((ulong)remaining + tie - 1) / tie);
                if (cut != threshold || need <= ties) (threshold, ties) = (cut, need);
            }
        }

        ulong kept = 0;
        long seen = 0;
        for (int i = 0; i < n; i++)
        {
            uint key = KeyOf(logits[i]);
            if (key > threshold || (key == threshold && seen++ < ties)) kept += weights[i];
        }
        ulong ticket = Math.BigMul(Bits, kept, out _);
        ulong cumulative = 0;
        seen = 0;
        for (int i = 0; i < n; i++)
        {
            uint key = KeyOf(logits[i]);
            if (key > threshold || (key == threshold && seen++ < ties))
            {
                cumulative += weights[i];
                if (cumulative > ticket) return i;
            }
        }
        throw new InvalidOperationException("The draw's ticket passed the kept weight: the logits changed while drawing.");
    }

    /// <summary>
    /// Radix select over the keys at or above <paramref name="floor"/>, from the top: the key at which the descending
    /// running count (or weight) first reaches <paramref name="target"/>. <paramref name="remaining"/> is what is still
    /// to take at that key (≥ 1), or −1 when everything at or above the floor totals less than the target.
    /// </summary>
    private static uint Select(ReadOnlySpan<float> logits, ReadOnlySpan<ulong> weights, Span<ulong> histogram, bool byWeight, uint floor, ulong target,
        out long remaining)
    {
        uint prefix = 0, mask = 0;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            histogram.Clear();
            for (int i = 0; i < logits.Length; i++)
            {
                uint key = KeyOf(logits[i]);
                if ((key & mask) == prefix && key >= floor) histogram[(int)(key >> shift) & 255] += byWeight ? weights[i] : 1;
            }
            int digit = 255;
            ulong above = 0;
            while (digit >= 0 && above + histogram[digit] < target) above += histogram[digit--];
            if (digit < 0) { remaining = -1; return floor; }
            target -= above;
            prefix |= (uint)digit << shift;
            mask |= 255u << shift;
        }
        remaining = (long)target;
        return prefix;
    }

    /// <summary>⌊p · total⌋ in float64 (the GPU does the same operation), at least 1.</summary>
    internal static ulong MassTarget(float topP, ulong total) => Math.Max(1, (ulong)((double)topP * total));

    /// <summary>A logit's weight: ⌊exp((x − max) · (1/T)) · 2⁴⁰⌋.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Weight(float logit, float max, float inverseTemperature) => (ulong)(MathF.Exp((logit - max) * inverseTemperature) * WeightScale);

    /// <summary>The float's bits mapped so that unsigned order is the floats' order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint KeyOf(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        return (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
    }

    /// <summary>The float a key came from.</summary>
    internal static float ValueOf(uint key) => BitConverter.UInt32BitsToSingle((key & 0x8000_0000u) != 0 ? key & 0x7fff_ffffu : ~key);
}
