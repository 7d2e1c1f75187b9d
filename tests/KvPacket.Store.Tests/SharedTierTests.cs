using KvPacket.Compute.Kv;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Tests;
using StackExchange.Redis;
using Xunit;

namespace KvPacket.Store.Tests;

/// <summary>The shared tier's tests run by themselves: each starts Garnet servers in this process, which need its threads.</summary>
[CollectionDefinition(nameof(SharedTierTests), DisableParallelization = true)]
public sealed class SharedTierCollection;

/// <summary>Nodes (a model, a local store, the shared tier) sharing packets through a real Garnet server started by each test.</summary>
[Collection(nameof(SharedTierTests))]
public sealed class SharedTierTests : IDisposable
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");
    private readonly TempDirectory _temp = Fixtures.TempDirectory();
    private readonly Checkpoint _checkpoint = CheckpointLoader.Load(Stories);
    private readonly List<IDisposable> _owned = [];

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _checkpoint.Dispose();
        _temp.Dispose();
    }

    private sealed record Node(Transformer Model, PacketStore Store, SharedPacketTier Tier, StoredPackets Packets, CollectingLogger Log);

    private T Own<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        return item;
    }

    private Node StartNode(string name, string endpoint, TimeSpan? timeout = null, bool copy = false)
    {
        var log = new CollectingLogger();
        var model = Own(new Transformer(_checkpoint, new TransformerOptions { KvCacheTokens = 2048, MaxBatchTokens = 64 }));
        var store = Own(PacketStore.Open(Path.Combine(_temp.Path, name)));
        var tier = Own(SharedPacketTier.Connect(new SharedTierOptions { Endpoint = endpoint, Timeout = timeout ?? TimeSpan.FromSeconds(2) }, log));
        var packets = Own(new StoredPackets(model, store, shared: tier) { CopySharedToStore = copy });
        return new Node(model, store, tier, packets, log);
    }

    private EmbeddedGarnet StartGarnet(int? port = null) => Own(EmbeddedGarnet.Start(Path.Combine(_temp.Path, "garnet"), port));

    private static int[] Document(ulong seed) => new SeededRandom(seed).NextTokens(70, 3, 512);

    /// <summary>The packet's K and V rows (not the unused rows of its last block), in block, layer, plane, head order.</summary>
    private static byte[] Bytes(Packet packet)
    {
        var layout = packet.Pool.Layout;
        var bytes = new List<byte>();
        for (int b = 0; b < packet.Blocks.Count; b++)
        {
            int rows = Math.Min(layout.BlockSize, packet.Length - b * layout.BlockSize);
            var block = ((KvBlockPool)packet.Pool).BlockBytes(packet.Blocks[b]);
            for (int plane = 0; plane < 2 * layout.LayerCount; plane++)
                for (int head = 0; head < layout.KvHeadCount; head++)
                    bytes.AddRange(block.Slice((int)(plane * layout.PlaneBytes + layout.Offset(head, 0) * layout.ElementBytes), rows * layout.HeadDim * layout.ElementBytes).ToArray());
        }
        return bytes.ToArray();
    }

    private static byte[] AcquireBytes(Node node, int[] document, Adapter? adapter = null)
    {
        using var packet = node.Packets.Acquire(document, adapter);
        return Bytes(packet);
    }

    private static Adapter TestAdapter() => new("kvp", 1, new SeededRandom(1).NextTokens(2 * 64, -3, 3).Select(v => v * 0.1f).ToArray(),
        new SeededRandom(2).NextTokens(64, -3, 3).Select(v => v * 0.1f).ToArray(), []);

    [Fact]
    public void A_packet_built_on_one_node_is_loaded_by_another_from_the_shared_tier_byte_for_byte_with_no_rebuild()
    {
        var garnet = StartGarnet();
        var a = StartNode("a", garnet.Endpoint);
        var b = StartNode("b", garnet.Endpoint, copy: true);
        var adapter = TestAdapter();
        int[] document = Document(1);

        byte[] plain = AcquireBytes(a, document), adapted = AcquireBytes(a, document, adapter);
        Assert.Equal((2L, 2L), (a.Packets.Builds, a.Tier.Publishes));
        Assert.Equal(0, a.Tier.Errors);

        Assert.Equal(plain, AcquireBytes(b, document));
        Assert.Equal(adapted, AcquireBytes(b, document, adapter));
        Assert.Equal((0L, 2L, 2L), (b.Packets.Builds, b.Packets.SharedLoads, b.Tier.Hits));
        Assert.True(b.Tier.BytesRead >= plain.Length + adapted.Length);
        // B, asked to, keeps its own durable copy: the next acquire after its resident tier is gone reads B's store.
        b.Packets.WaitForLocalCopies();
        Assert.Equal(0, b.Packets.LocalCopyFailures);
        Assert.True(b.Store.Contains(b.Packets.IdOf(document, null)) && b.Store.Contains(b.Packets.IdOf(document, adapter)));
        Assert.Empty(b.Log.Messages);
    }

    [Fact]
    public void On_a_three_server_garnet_cluster_packets_spread_over_the_servers_and_load_on_another_node_byte_for_byte()
    {
        var servers = EmbeddedGarnet.StartCluster(Path.Combine(_temp.Path, "cluster"), 3);
        foreach (var server in servers) Own(server);
        // Each node knows one server; the client finds the others and routes every key to its slot's owner.
        var a = StartNode("a", servers[0].Endpoint);
        var b = StartNode("b", servers[2].Endpoint);
        var documents = Enumerable.Range(10, 12).Select(i => Document((ulong)i)).ToArray();
        var built = documents.Select(d => AcquireBytes(a, d)).ToArray();
        Assert.Equal((12L, 12L, 0L), (a.Packets.Builds, a.Tier.Publishes, a.Tier.Errors));
        for (int i = 0; i < documents.Length; i++) Assert.Equal(built[i], AcquireBytes(b, documents[i]));
        Assert.Equal((0L, 12L, 0L), (b.Packets.Builds, b.Tier.Hits, b.Tier.Errors));
        using var raw = ConnectionMultiplexer.Connect(servers[0].Endpoint);
        Assert.All(servers, server => Assert.True(raw.GetServer(server.Endpoint).DatabaseSize() > 0, $"no keys on {server.Endpoint}"));
    }

    [Fact]
    public void A_flipped_byte_in_a_remote_page_is_detected_not_served_and_the_packet_is_rebuilt_and_the_tier_healed()
    {
        var garnet = StartGarnet();
        var a = StartNode("a", garnet.Endpoint);
        int[] document = Document(2);
        byte[] expected = AcquireBytes(a, document);
        var id = a.Packets.IdOf(document, null);

        using (var raw = ConnectionMultiplexer.Connect(garnet.Endpoint))
        {
            var database = raw.GetDatabase();
            byte[] page = database.StringGet(a.Tier.PageKey(id, 0))!;
            page[RecordHeader.Size + page.Length / 3] ^= 0x10;
            database.StringSet(a.Tier.PageKey(id, 0), page);
        }

        var b = StartNode("b", garnet.Endpoint);
        Assert.Equal(expected, AcquireBytes(b, document));
        Assert.Equal((1L, 0L, 1L), (b.Packets.Builds, b.Tier.Hits, b.Tier.Errors));
        Assert.Contains(b.Log.Messages, m => m.Contains("checksum mismatch", StringComparison.Ordinal) && m.Contains(id.ToString(), StringComparison.Ordinal));

        // B's rebuild was published over the damaged page: a third node loads it clean.
        var c = StartNode("c", garnet.Endpoint);
        Assert.Equal(expected, AcquireBytes(c, document));
        Assert.Equal((0L, 1L, 0L), (c.Packets.Builds, c.Tier.Hits, c.Tier.Errors));
    }

    [Fact]
    public void A_remote_packet_of_another_model_or_under_another_packets_key_is_refused()
    {
        var garnet = StartGarnet();
        var a = StartNode("a", garnet.Endpoint);
        int[] document = Document(3);
        AcquireBytes(a, document);
        var id = a.Packets.IdOf(document, null);
        var other = new ModelFingerprint(a.Packets.Fingerprint.Value ^ 1);

        Assert.False(a.Tier.TryLoad(id, other, a.Model.KvPool, out _));
        Assert.Contains(a.Log.Messages, m => m.Contains($"not by the loaded model {other}", StringComparison.Ordinal));

        // The same records copied under the keys of another document's packet: right model, wrong packet.
        var elsewhere = a.Packets.IdOf(Document(4), null);
        using (var raw = ConnectionMultiplexer.Connect(garnet.Endpoint))
        {
            var database = raw.GetDatabase();
            database.StringSet(a.Tier.PageKey(elsewhere, 0), database.StringGet(a.Tier.PageKey(id, 0)));
            database.StringSet(a.Tier.ManifestKey(elsewhere), database.StringGet(a.Tier.ManifestKey(id)));
        }
        int free = a.Model.KvPool.FreeBlockCount;
        Assert.False(a.Tier.TryLoad(elsewhere, a.Packets.Fingerprint, a.Model.KvPool, out _));
        Assert.Contains(a.Log.Messages, m => m.Contains($"is packet {id}'s, not {elsewhere}'s", StringComparison.Ordinal));
        Assert.Equal((2L, 0L), (a.Tier.Errors, a.Tier.Hits));
        Assert.Equal(free, a.Model.KvPool.FreeBlockCount);
    }

    [Fact]
    public void The_server_killed_between_pages_and_manifest_leaves_no_visible_packet_and_the_writer_keeps_serving()
    {
        var garnet = EmbeddedGarnet.Start(Path.Combine(_temp.Path, "garnet"));
        int port = garnet.Port;
        var a = StartNode("a", garnet.Endpoint, TimeSpan.FromMilliseconds(500));
        var b = StartNode("b", garnet.Endpoint, TimeSpan.FromMilliseconds(500));
        int[] document = Document(5);
        var id = a.Packets.IdOf(document, null);
        bool visibleMidWrite = true;
        a.Tier.AfterPagesWritten = _ =>
        {
            visibleMidWrite = b.Tier.TryLoad(id, b.Packets.Fingerprint, b.Model.KvPool, out var early);
            early?.Dispose();
            garnet.Dispose();
        };

        byte[] served = AcquireBytes(a, document);
        Assert.False(visibleMidWrite);
        Assert.Equal((1L, 0L, 1L), (a.Packets.Builds, a.Tier.Publishes, a.Tier.Errors));
        Assert.Contains(a.Log.Messages, m => m.Contains("not published", StringComparison.Ordinal));
        Assert.Equal(served, AcquireBytes(a, document)); // still serving, from its own tiers

        // Restarted on its data: the acknowledged pages came back, the manifest never was written, so no packet.
        a.Tier.AfterPagesWritten = null;
        Own(EmbeddedGarnet.Start(Path.Combine(_temp.Path, "garnet"), port));
        using (var raw = ConnectionMultiplexer.Connect(garnet.Endpoint))
        {
            Assert.True(raw.GetDatabase().KeyExists(a.Tier.PageKey(id, 0)));
            Assert.False(raw.GetDatabase().KeyExists(a.Tier.ManifestKey(id)));
        }
        for (int wait = 0; wait < 200 && !b.Tier.IsConnected; wait++) Thread.Sleep(50);
        long misses = b.Tier.Misses;
        Assert.Equal(served, AcquireBytes(b, document));
        Assert.Equal((misses + 1, 1L, 0L), (b.Tier.Misses, b.Packets.Builds, b.Tier.Hits));
    }

    [Fact]
    public void A_node_whose_tier_is_down_at_start_logs_it_and_serves_from_its_local_tiers()
    {
        var node = StartNode("a", $"127.0.0.1:{EmbeddedGarnet.FreePort()}", TimeSpan.FromMilliseconds(300));
        Assert.False(node.Tier.IsConnected);
        Assert.Contains(node.Log.Messages, m => m.Contains("unreachable", StringComparison.Ordinal));
        int[] document = Document(6);
        byte[] first = AcquireBytes(node, document);
        Assert.Equal((1L, 0L, 0L), (node.Packets.Builds, node.Tier.Publishes, node.Tier.Errors));
        Assert.True(node.Tier.Unavailable >= 2); // the lookup and the publication, both skipped at once
        Assert.Equal(first, AcquireBytes(node, document));
    }

    /// <summary>The Redis cluster slot of <paramref name="key"/>: CRC-16/XMODEM of its hash tag (the text inside its first
    /// non-empty <c>{…}</c>, else the whole key) mod 16384, as the cluster specification defines it.</summary>
    private static int ClusterSlot(string key)
    {
        int open = key.IndexOf('{'), close = open < 0 ? -1 : key.IndexOf('}', open + 1);
        string hashed = close > open + 1 ? key[(open + 1)..close] : key;
        int crc = 0;
        foreach (byte b in System.Text.Encoding.UTF8.GetBytes(hashed))
        {
            crc ^= b << 8;
            for (int bit = 0; bit < 8; bit++) crc = (crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1;
        }
        return (crc & 0xFFFF) % 16384;
    }

    [Fact]
    public void A_packets_keys_share_one_cluster_slot_and_other_packets_spread_over_others()
    {
        Assert.Equal(12739, ClusterSlot("123456789")); // CRC-16/XMODEM's check value 0x31C3, mod 16384
        var node = StartNode("a", $"127.0.0.1:{EmbeddedGarnet.FreePort()}", TimeSpan.FromMilliseconds(100));
        var ids = Enumerable.Range(0, 64).Select(i => node.Packets.IdOf(Document((ulong)i + 1), null)).ToArray();
        foreach (var id in ids)
        {
            int slot = ClusterSlot(node.Tier.ManifestKey(id));
            Assert.All(Enumerable.Range(0, 8), p => Assert.Equal(slot, ClusterSlot(node.Tier.PageKey(id, p))));
        }
        Assert.True(ids.Select(id => ClusterSlot(node.Tier.ManifestKey(id))).Distinct().Count() > 56);
    }

    [Theory]
    [InlineData("redis://cache.local:6379", "cache.local:6379")]
    [InlineData("rediss://cache.local:6380", "cache.local:6380,ssl=true")]
    [InlineData("redis://:s3cret@10.0.0.2:7000", "10.0.0.2:7000,password=s3cret")]
    [InlineData("127.0.0.1:6379", "127.0.0.1:6379")]
    public void Shared_tier_addresses_are_read_as_urls_or_host_and_port(string address, string endpoint) =>
        Assert.Equal(endpoint, SharedTierOptions.Parse(address).Endpoint);

    [Theory]
    [InlineData("http://cache.local:6379")]
    [InlineData("redis://cache.local")]
    [InlineData("cache.local")]
    [InlineData("cache.local:notaport")]
    public void Other_addresses_are_refused_with_the_forms_that_work(string address) =>
        Assert.Contains("redis://HOST:PORT", Assert.Throws<FormatException>(() => SharedTierOptions.Parse(address)).Message, StringComparison.Ordinal);
}
