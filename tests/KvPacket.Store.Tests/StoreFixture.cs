using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Store.Testing;

namespace KvPacket.Store.Tests;

/// <summary>Small-page store options so that packets span several pages and segments roll over quickly in tests.</summary>
internal static class TestStores
{
    public static PacketStoreOptions Options(bool readOnly = false) =>
        new() { ReadOnly = readOnly, TargetPageBytes = 4096, LogPageSizeBits = 16, SegmentSizeBits = 18 };

    public static KvBlockPool Pool(DType type = DType.F16, int blocks = 256) => new(SyntheticPackets.Layout(type), blocks);

    /// <summary>Puts the packet for <paramref name="seed"/> and releases the in-memory copy.</summary>
    public static async Task<PacketInfo> PutSeedAsync(PacketStore store, KvBlockPool pool, int seed, KvStorage storage = KvStorage.F16)
    {
        using var packet = SyntheticPackets.Build(pool, seed);
        return await store.PutAsync(packet, SyntheticPackets.Model, SyntheticPackets.Tokens(seed), AdapterRef.None, storage);
    }

    /// <summary>Loads <paramref name="id"/> and checks it holds <paramref name="seed"/>'s KV.</summary>
    public static bool LoadsAs(PacketStore store, KvBlockPool pool, PacketId id, int seed)
    {
        if (!store.TryLoad(id, SyntheticPackets.Model, pool, out Packet? packet)) return false;
        using (packet) return SyntheticPackets.Matches(packet, seed);
    }

    public static PacketId IdOf(int seed) => PacketId.For(SyntheticPackets.Model, AdapterRef.None, SyntheticPackets.Tokens(seed));
}
