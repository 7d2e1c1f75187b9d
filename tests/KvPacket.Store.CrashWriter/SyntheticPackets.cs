using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;

namespace KvPacket.Store.Testing;

/// <summary>
/// Packets whose KV and tokens follow from a seed, so a test (or the crash writer's parent) can rebuild what a
/// packet must contain: tokens[0] is the seed, the length and every KV value are drawn from it.
/// </summary>
internal static class SyntheticPackets
{
    public static readonly ModelFingerprint Model = new(new UInt128(0x0123456789abcdefUL, 0x0fedcba987654321UL));

    public static KvCacheLayout Layout(DType type = DType.F16) => new(LayerCount: 2, KvHeadCount: 2, HeadDim: 8, BlockSize: 16, type);

    public static int[] Tokens(int seed)
    {
        var random = new SeededRandom((ulong)seed * 7919 + 1);
        int length = 1 + (int)(random.NextUInt64() % 90);
        int[] tokens = random.NextTokens(length, 0, 32000);
        tokens[0] = seed;
        return tokens;
    }

    /// <summary>The packet for <paramref name="seed"/> in <paramref name="pool"/>: the tokens' KV, drawn from the seed.</summary>
    public static Packet Build(KvBlockPool pool, int seed, int? length = null)
    {
        int tokens = length ?? Tokens(seed).Length;
        int[] blocks = new int[(tokens + pool.Layout.BlockSize - 1) / pool.Layout.BlockSize];
        for (int i = 0; i < blocks.Length; i++)
        {
            blocks[i] = pool.Allocate();
            Fill(pool, blocks[i], seed, i);
        }
        return new Packet(pool, blocks, tokens);
    }

    /// <summary>Fills block <paramref name="block"/> with values drawn from (seed, index) in (-2, 2).</summary>
    public static void Fill(KvBlockPool pool, int block, int seed, int index)
    {
        var random = new SeededRandom(((ulong)seed << 20) ^ (ulong)index ^ 0x9e3779b97f4a7c15UL);
        var bytes = pool.BlockBytes(block);
        if (pool.Layout.Type == DType.F16)
        {
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes);
            for (int i = 0; i < values.Length; i++) values[i] = (Half)(random.NextSingle() * 4 - 2);
        }
        else
        {
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes);
            for (int i = 0; i < values.Length; i++) values[i] = random.NextSingle() * 4 - 2;
        }
    }

    /// <summary>Whether <paramref name="packet"/> holds exactly what <see cref="Build"/> makes for <paramref name="seed"/>.</summary>
    public static bool Matches(Packet packet, int seed)
    {
        var pool = (KvBlockPool)packet.Pool;
        int scratch = pool.Allocate();
        try
        {
            for (int i = 0; i < packet.Blocks.Count; i++)
            {
                Fill(pool, scratch, seed, i);
                if (!pool.BlockBytes(scratch).SequenceEqual(pool.BlockBytes(packet.Blocks[i]))) return false;
            }
            return true;
        }
        finally { pool.Release(scratch); }
    }
}
