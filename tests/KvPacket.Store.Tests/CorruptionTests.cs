using KvPacket.Store.Testing;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Store.Tests;

/// <summary>Damage on disk is found, reported with where it is, and never turns into wrong KV; the rest stays readable.</summary>
public class CorruptionTests
{
    private const int Packets = 8;

    private static async Task<string> StoreWithPacketsAsync(TempDirectory temp, Compute.Kv.KvBlockPool pool)
    {
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        for (int seed = 1; seed <= Packets; seed++) await TestStores.PutSeedAsync(store, pool, 100 + seed * 3);
        return temp.Path;
    }

    private static int Seed(int i) => 100 + i * 3;

    private static (string File, long Offset) Locate(string path, int seed, Func<(RecordRef Manifest, RecordRef[] Pages), (RecordRef Record, int Offset)> pick)
    {
        using var store = PacketStore.Open(path, TestStores.Options(readOnly: true));
        var (record, offset) = pick(store.RecordsOf(TestStores.IdOf(seed)));
        return store.FileOffsetOf(record.Address, offset);
    }

    private static void FlipByte(string file, long offset)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = offset;
        int value = stream.ReadByte();
        stream.Position = offset;
        stream.WriteByte((byte)(value ^ 0x5A));
    }

    private static void AssertOthersLoad(PacketStore store, Compute.Kv.KvBlockPool pool, int damaged)
    {
        for (int i = 1; i <= Packets; i++)
            if (i != damaged) Assert.True(TestStores.LoadsAs(store, pool, TestStores.IdOf(Seed(i)), Seed(i)), $"packet {i}");
    }

    [Fact]
    public async Task A_flipped_payload_byte_fails_that_load_and_verify_but_nothing_else()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        string path = await StoreWithPacketsAsync(temp, pool);
        var (file, offset) = Locate(path, Seed(4), r => (r.Pages[^1], RecordHeader.Size + 100));
        FlipByte(file, offset);

        using var store = PacketStore.Open(path, TestStores.Options());
        var error = Assert.Throws<CorruptRecordException>(() => store.TryLoad(TestStores.IdOf(Seed(4)), SyntheticPackets.Model, pool, out _));
        Assert.Contains(TestStores.IdOf(Seed(4)).ToString(), error.Message);
        Assert.Contains("checksum", error.Message);
        Assert.Equal(256, pool.FreeBlockCount);
        AssertOthersLoad(store, pool, damaged: 4);
        var verification = store.Verify();
        Assert.False(verification.IsSound);
        Assert.Contains(verification.Problems, p => p.Contains("checksum"));
    }

    [Fact]
    public async Task A_damaged_page_header_is_caught_before_its_fields_are_trusted()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        string path = await StoreWithPacketsAsync(temp, pool);
        var (file, offset) = Locate(path, Seed(2), r => (r.Pages[0], 60)); // the payload length field
        FlipByte(file, offset);
        using var store = PacketStore.Open(path, TestStores.Options());
        var error = Assert.Throws<CorruptRecordException>(() => store.TryLoad(TestStores.IdOf(Seed(2)), SyntheticPackets.Model, pool, out _));
        Assert.Contains("header checksum", error.Message);
        AssertOthersLoad(store, pool, damaged: 2);
        Assert.False(store.Verify().IsSound);
    }

    [Fact]
    public async Task A_damaged_manifest_drops_its_packet_when_the_index_is_rebuilt_and_is_logged()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        string path = await StoreWithPacketsAsync(temp, pool);
        var (file, offset) = Locate(path, Seed(5), r => (r.Manifest, RecordHeader.Size + 3));
        FlipByte(file, offset);
        File.Delete(Path.Combine(path, "index.snapshot"));
        var logger = new CollectingLogger();
        using var store = PacketStore.Open(path, TestStores.Options() with { Logger = logger });
        Assert.False(store.Contains(TestStores.IdOf(Seed(5))));
        Assert.Contains(logger.Messages, m => m.Contains("checksum"));
        AssertOthersLoad(store, pool, damaged: 5);
        Assert.Contains(store.Verify().Problems, p => p.Contains("checksum"));
    }

    [Fact]
    public async Task A_log_truncated_mid_record_keeps_every_earlier_packet()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        string path = await StoreWithPacketsAsync(temp, pool);
        var (file, offset) = Locate(path, Seed(Packets), r => (r.Pages[0], RecordHeader.Size + 10));
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.Write)) stream.SetLength(offset);

        var logger = new CollectingLogger();
        using var store = PacketStore.Open(path, TestStores.Options(readOnly: true) with { Logger = logger });
        for (int i = 1; i < Packets; i++)
            Assert.True(TestStores.LoadsAs(store, pool, TestStores.IdOf(Seed(i)), Seed(i)), $"packet {i}");
        var last = TestStores.IdOf(Seed(Packets));
        if (store.Contains(last)) Assert.Throws<CorruptRecordException>(() => store.TryLoad(last, SyntheticPackets.Model, pool, out _));
        Assert.False(store.Verify().IsSound);
        Assert.Equal(256, pool.FreeBlockCount);
    }

    [Fact]
    public async Task A_damaged_index_snapshot_is_reported_and_rebuilt_from_the_log()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        string path = await StoreWithPacketsAsync(temp, pool);
        string snapshot = Path.Combine(path, "index.snapshot");
        FlipByte(snapshot, new FileInfo(snapshot).Length / 2);

        var logger = new CollectingLogger();
        using var store = PacketStore.Open(path, TestStores.Options(readOnly: true) with { Logger = logger });
        Assert.Contains(logger.Messages, m => m.Contains("index snapshot") && m.Contains("damaged"));
        AssertOthersLoad(store, pool, damaged: 0);
        var verification = store.Verify();
        Assert.Contains(verification.Problems, p => p.Contains("index snapshot"));
    }
}
