using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Store.Testing;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Store.Tests;

public class PacketStoreTests
{
    [Fact]
    public async Task Packets_survive_reopening_byte_for_byte_and_leave_the_pool_as_they_found_it()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        var ids = new List<PacketId>();
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
            for (int seed = 1; seed <= 12; seed++)
                ids.Add((await TestStores.PutSeedAsync(store, pool, seed)).Id);
        Assert.Equal(256, pool.FreeBlockCount);

        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            Assert.Equal(12, store.Stats().Packets);
            for (int seed = 1; seed <= 12; seed++)
            {
                Assert.True(TestStores.LoadsAs(store, pool, ids[seed - 1], seed), $"packet {seed}");
                Assert.Equal(SyntheticPackets.Tokens(seed), store.ReadDocument(ids[seed - 1]));
            }
            Assert.Equal(ids, store.List(0, 100).Select(p => p.Id));
            Assert.Equal(ids.Skip(5).Take(3), store.List(5, 3).Select(p => p.Id));
            Assert.True(store.Verify().IsSound);
        }
        Assert.Equal(256, pool.FreeBlockCount);
    }

    [Fact]
    public async Task Reopening_after_a_crash_without_a_snapshot_rebuilds_the_index_from_the_log()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
            for (int seed = 1; seed <= 5; seed++) await TestStores.PutSeedAsync(store, pool, seed);
        File.Delete(Path.Combine(temp.Path, "index.snapshot"));
        using var reopened = PacketStore.Open(temp.Path, TestStores.Options());
        for (int seed = 1; seed <= 5; seed++) Assert.True(TestStores.LoadsAs(reopened, pool, TestStores.IdOf(seed), seed));
    }

    [Theory]
    [InlineData(DType.F16, KvStorage.F32, 0.0)]
    [InlineData(DType.F32, KvStorage.F16, 1e-3)]
    [InlineData(DType.F16, KvStorage.Int8, 2.0 / 127 / 2 + 2e-3)]
    [InlineData(DType.F32, KvStorage.Int8, 2.0 / 127 / 2 + 1e-6)]
    public async Task Stored_forms_decode_back_within_their_rounding(DType poolType, KvStorage storage, double tolerance)
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool(poolType);
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        var info = await TestStores.PutSeedAsync(store, pool, 7, storage);
        Assert.Equal(storage, info.Storage);
        Assert.True(store.TryLoad(info.Id, SyntheticPackets.Model, pool, out Packet? loaded));
        using (loaded)
        using (var expected = SyntheticPackets.Build(pool, 7))
        {
            double worst = WorstFilledDifference(pool, expected, loaded);
            Assert.True(worst <= tolerance, $"max abs error {worst} > {tolerance}");
        }
        if (storage == KvStorage.Int8) Assert.True(info.StoredBytes < 0.6 * pool.Layout.BlockBytes * PacketStore.BlockCount(info) * (poolType == DType.F16 ? 1 : 0.5));
    }

    [Theory]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public async Task An_int8_page_is_scaled_by_the_packets_tokens_alone_whatever_a_free_slot_holds(DType poolType)
    {
        // A 20-token packet: its second block holds 4 tokens, and its 12 free slots NaN (a device's uninitialised memory
        // can hold anything). Before, a NaN there made that block's every scale NaN, and a large value coarsened them.
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool(poolType);
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        using var packet = SyntheticPackets.Build(pool, 7, length: 20);
        var layout = pool.Layout;
        var last = pool.BlockBytes(packet.Blocks[1]);
        for (int plane = 0; plane < 2 * layout.LayerCount; plane++)
            for (int head = 0; head < layout.KvHeadCount; head++)
                for (int slot = 4; slot < layout.BlockSize; slot++)
                    for (int d = 0; d < layout.HeadDim; d++)
                    {
                        long at = plane * layout.PlaneBytes / layout.ElementBytes + layout.Offset(head, slot) + d;
                        if (poolType == DType.F16) System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(last)[(int)at] = Half.NaN;
                        else System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(last)[(int)at] = float.NaN;
                    }
        var info = await store.PutAsync(packet, SyntheticPackets.Model, Enumerable.Range(1, 20).ToArray(), AdapterRef.None, KvStorage.Int8);
        Assert.True(store.TryLoad(info.Id, SyntheticPackets.Model, pool, out Packet? loaded));
        using (loaded)
        {
            double worst = WorstFilledDifference(pool, packet, loaded);
            Assert.True(worst <= 2.0 / 127 / 2 + 2e-3, $"max abs error {worst} over the packet's tokens");
        }
    }

    /// <summary>The largest |Δ| between two packets over the slots the first one's tokens fill (NaN counts as infinite).</summary>
    private static double WorstFilledDifference(Compute.Kv.KvBlockPool pool, Packet expected, Packet actual)
    {
        var layout = pool.Layout;
        int segment = layout.BlockSize * layout.HeadDim;
        double worst = 0;
        for (int b = 0; b < expected.Blocks.Count; b++)
        {
            int rows = Math.Min(layout.BlockSize, expected.Length - b * layout.BlockSize);
            float[] want = Widen(pool, expected.Blocks[b]), got = Widen(pool, actual.Blocks[b]);
            for (int i = 0; i < want.Length; i++)
                if (i % segment / layout.HeadDim < rows)
                    worst = Math.Max(worst, float.IsNaN(got[i]) ? double.PositiveInfinity : Math.Abs(want[i] - got[i]));
        }
        return worst;
    }

    private static float[] Widen(Compute.Kv.KvBlockPool pool, int block)
    {
        var bytes = pool.BlockBytes(block);
        return pool.Layout.Type == DType.F16
            ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray()
            : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();
    }

    [Fact]
    public async Task Putting_the_same_packet_twice_writes_nothing_and_another_form_supersedes_it()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        var first = await TestStores.PutSeedAsync(store, pool, 3);
        var stats = store.Stats();
        Assert.Equal(first, await TestStores.PutSeedAsync(store, pool, 3));
        Assert.Equal(stats, store.Stats());
        var int8 = await TestStores.PutSeedAsync(store, pool, 3, KvStorage.Int8);
        Assert.Equal(first.Id, int8.Id);
        Assert.Equal(1, store.Stats().Packets);
        Assert.True(store.Stats().DeadBytes >= first.StoredBytes);
        Assert.Equal(KvStorage.Int8, store.List().Single().Storage);
    }

    [Fact]
    public async Task Deletes_are_durable_and_compaction_reclaims_segments_while_live_packets_stay_readable()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            for (int seed = 1; seed <= 60; seed++) await TestStores.PutSeedAsync(store, pool, seed);
            for (int seed = 1; seed <= 60; seed++)
                if (seed % 4 != 0) Assert.True(await store.DeleteAsync(TestStores.IdOf(seed)));
            Assert.False(await store.DeleteAsync(TestStores.IdOf(1)));
        }
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            var before = store.Stats();
            Assert.Equal(15, before.Packets);
            Assert.True(before.LiveRatio < 0.5);
            Assert.True(File.Exists(Path.Combine(temp.Path, "log", "data.1")));
            var after = await store.CompactAsync();
            Assert.Equal(15, after.Packets);
            Assert.True(after.LogBytes < before.LogBytes / 2, $"{after.LogBytes} vs {before.LogBytes}");
            Assert.False(File.Exists(Path.Combine(temp.Path, "log", "data.0")), "compaction left the first segment file in place");
            for (int seed = 4; seed <= 60; seed += 4) Assert.True(TestStores.LoadsAs(store, pool, TestStores.IdOf(seed), seed));
            Assert.False(store.Contains(TestStores.IdOf(1)));
            Assert.True(store.Verify().IsSound);
        }
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            Assert.Equal(15, store.Stats().Packets);
            for (int seed = 4; seed <= 60; seed += 4) Assert.True(TestStores.LoadsAs(store, pool, TestStores.IdOf(seed), seed));
        }
    }

    [Fact]
    public async Task Adapters_are_versioned_immutable_and_tied_to_their_model()
    {
        using var temp = Fixtures.TempDirectory();
        const int hidden = 4;
        var v1 = new Adapter("kvp", 1, [1, 2, 3, 4], [5, 6, 7, 8], []);
        var v2 = new Adapter("kvp", 2, [9, 9, 9, 9, 8, 8, 8, 8], [7, 7, 7, 7], [1, 1, 1, 1]);
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            await store.PutAdapterAsync(v1, SyntheticPackets.Model, hidden);
            await store.PutAdapterAsync(v2, SyntheticPackets.Model, hidden);
            await store.PutAdapterAsync(v1, SyntheticPackets.Model, hidden); // the same values again: fine
            var clash = await Assert.ThrowsAsync<PacketStoreException>(() => store.PutAdapterAsync(v1 with { Header = [0, 0, 0, 0] }, SyntheticPackets.Model, hidden).AsTask());
            Assert.Contains("immutable", clash.Message);
        }
        using (var store = PacketStore.Open(temp.Path, TestStores.Options()))
        {
            Assert.Equal([1, 2], store.AdapterVersions("kvp"));
            var latest = store.GetAdapter("kvp", SyntheticPackets.Model)!;
            Assert.Equal(2, latest.Version);
            Assert.Equal(v2.Header, latest.Header);
            Assert.Equal(v2.Trailer, latest.Trailer);
            Assert.Equal(v2.Links, latest.Links);
            Assert.Equal(v1.Header, store.GetAdapter("kvp", SyntheticPackets.Model, 1)!.Header);
            Assert.Null(store.GetAdapter("other", SyntheticPackets.Model));
            var wrong = Assert.Throws<ModelMismatchException>(() => store.GetAdapter("kvp", new Core.Model.ModelFingerprint(42)));
            Assert.Contains("kvp@2", wrong.Message);
        }
    }

    [Fact]
    public async Task Unknown_ids_and_other_models_are_clear_errors()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        var info = await TestStores.PutSeedAsync(store, pool, 5);
        var unknown = TestStores.IdOf(6);
        Assert.False(store.TryLoad(unknown, SyntheticPackets.Model, pool, out _));
        var missing = Assert.Throws<KeyNotFoundException>(() => store.LoadInto(unknown, SyntheticPackets.Model, pool, new int[1]));
        Assert.Contains(unknown.ToString(), missing.Message);
        var other = new Core.Model.ModelFingerprint(99);
        var mismatch = Assert.Throws<ModelMismatchException>(() => store.TryLoad(info.Id, other, pool, out _));
        Assert.Contains(other.ToString(), mismatch.Message);
        Assert.Equal(256, pool.FreeBlockCount);
        using var otherLayout = new Compute.Kv.KvBlockPool(SyntheticPackets.Layout() with { BlockSize = 8 }, 32);
        Assert.Contains("blocks of 16 tokens", Assert.Throws<PacketStoreException>(() => store.TryLoad(info.Id, SyntheticPackets.Model, otherLayout, out _)).Message);
    }

    [Fact]
    public void A_newer_format_or_a_foreign_directory_is_refused_without_touching_it()
    {
        using var temp = Fixtures.TempDirectory();
        using (PacketStore.Open(temp.Path, TestStores.Options())) { }
        string format = Path.Combine(temp.Path, "store.json");
        File.WriteAllText(format, """{"format":"kvpacket-store","version":2}""");
        var newer = Assert.Throws<StoreFormatException>(() => PacketStore.Open(temp.Path, TestStores.Options()));
        Assert.Contains("format version 2", newer.Message);
        Assert.Equal("""{"format":"kvpacket-store","version":2}""", File.ReadAllText(format));

        using var foreign = Fixtures.TempDirectory();
        File.WriteAllText(Path.Combine(foreign.Path, "notes.txt"), "mine");
        Assert.Contains("not empty", Assert.Throws<StoreFormatException>(() => PacketStore.Open(foreign.Path, TestStores.Options())).Message);
        Assert.Single(Directory.GetFileSystemEntries(foreign.Path));
    }

    [Fact]
    public async Task A_second_writer_is_refused_and_read_only_handles_follow_the_writer()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        using var writer = PacketStore.Open(temp.Path, TestStores.Options());
        var locked = Assert.Throws<StoreLockedException>(() => PacketStore.Open(temp.Path, TestStores.Options()));
        Assert.Contains($"pid {Environment.ProcessId}", locked.Message);

        await TestStores.PutSeedAsync(writer, pool, 1);
        using var reader = PacketStore.Open(temp.Path, TestStores.Options(readOnly: true));
        Assert.True(TestStores.LoadsAs(reader, pool, TestStores.IdOf(1), 1));
        await Assert.ThrowsAsync<InvalidOperationException>(() => TestStores.PutSeedAsync(reader, pool, 2));
        await TestStores.PutSeedAsync(writer, pool, 2);
        Assert.False(reader.Contains(TestStores.IdOf(2)));
        reader.Refresh();
        Assert.True(TestStores.LoadsAs(reader, pool, TestStores.IdOf(2), 2));
    }

    [Fact]
    public async Task A_full_store_refuses_the_write_and_loses_nothing()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        var options = TestStores.Options() with { CapacityBytes = 40_000 };
        var stored = new List<int>();
        using (var store = PacketStore.Open(temp.Path, options))
        {
            StoreFullException? full = null;
            for (int seed = 1; seed <= 100 && full is null; seed++)
            {
                try { await TestStores.PutSeedAsync(store, pool, seed); stored.Add(seed); }
                catch (StoreFullException e) { full = e; }
            }
            Assert.NotNull(full);
            Assert.Contains("is full", full.Message);
            var stats = store.Stats();
            Assert.Equal(stored.Count, stats.Packets);
            Assert.True(stats.LogBytes <= 40_000);
            foreach (int seed in stored) Assert.True(TestStores.LoadsAs(store, pool, TestStores.IdOf(seed), seed));
        }
        using var reopened = PacketStore.Open(temp.Path, options);
        Assert.Equal(stored.Count, reopened.Stats().Packets);
        Assert.True(reopened.Verify().IsSound);
        Assert.Equal(256, pool.FreeBlockCount);
    }
}
