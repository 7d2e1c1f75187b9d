using System.Runtime.CompilerServices;

namespace KvPacket.Core.Numerics;

/// <summary>
/// xoshiro256** seeded through splitmix64: fast, allocation-free and identical on every platform and .NET version,
/// which <see cref="Random"/> does not promise. Used for synthetic weights and sampling.
/// </summary>
public struct SeededRandom
{
    private ulong _s0, _s1, _s2, _s3;

    /// <summary>Seeds the generator.</summary>
    public SeededRandom(ulong seed)
    {
        _s0 = SplitMix(ref seed);
        _s1 = SplitMix(ref seed);
        _s2 = SplitMix(ref seed);
        _s3 = SplitMix(ref seed);
    }

    /// <summary>
    /// The stream of draw <paramref name="slot"/> of step <paramref name="step"/> of a run seeded <paramref name="seed"/>:
    /// what a training step draws depends on nothing else, so a resumed run draws what an uninterrupted one would.
    /// </summary>
    public static SeededRandom ForSlot(ulong seed, long step, int slot) => new(seed * 0x9E3779B97F4A7C15UL ^ ((ulong)step * 1_000_003UL + (ulong)slot));

    private static ulong SplitMix(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }

    /// <summary>The next 64 random bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 24 bits of precision.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float NextSingle() => (NextUInt64() >> 40) * (1f / (1 << 24));

    /// <summary><paramref name="count"/> token ids uniform in [<paramref name="low"/>, <paramref name="high"/>), for synthetic prompts and documents.</summary>
    public int[] NextTokens(int count, int low, int high)
    {
        var tokens = new int[count];
        for (int i = 0; i < count; i++) tokens[i] = low + (int)(NextUInt64() % (ulong)(high - low));
        return tokens;
    }

    /// <summary>Uniform in [0, 1) with 53 bits of precision.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));
}
