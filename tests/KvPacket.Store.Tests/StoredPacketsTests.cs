using ILGPU;
using ILGPU.Runtime.CPU;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Store.Tests;

/// <summary>The store behind a real model: packets served from it give the same answers as packets built in memory.</summary>
public class StoredPacketsTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static RagRequest Request()
    {
        var random = new SeededRandom(5);
        return new RagRequest([1], [random.NextTokens(40, 3, 512), random.NextTokens(23, 3, 512), random.NextTokens(17, 3, 512)], random.NextTokens(6, 3, 512));
    }

    private static float[] Logits(RagEngine engine, RagRequest request, RagMode mode)
    {
        var result = engine.Prefill(request, mode);
        result.Sequence.Dispose();
        return result.QueryLogits;
    }

    private static Transformer Model(Checkpoint checkpoint, DType kv = DType.F16) =>
        new(checkpoint, new TransformerOptions { KvType = kv, KvCacheTokens = 4096, MaxBatchTokens = 64 });

    [Theory]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void The_round_trip_a_gpu_runs_holds_on_the_cpu_backend_byte_for_byte(DType kv)
    {
        using var temp = Fixtures.TempDirectory();
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint, kv);
        AssertRoundTrip(model, temp.Path);
    }

    /// <summary>Built, stored, read back through a restarted source: the same bytes and logits, every block back.</summary>
    private static void AssertRoundTrip(IForwardBackend model, string directory, KvStorage? storage = null)
    {
        var result = PacketRoundTrip.Run(model, Path.Combine(directory, "store"), storage: storage);
        Assert.Equal(0, result.DifferentRows);
        Assert.Equal(0, result.MaxAbsLogitDifference);
        Assert.Equal(result.Packets, result.StoreLoads);
        Assert.Equal(model.KvBlocks.BlockCount, model.KvBlocks.FreeBlockCount);
    }

    [Fact]
    public void Packets_built_on_the_ilgpu_backend_are_stored_and_loaded_back_into_its_blocks_byte_for_byte()
    {
        using var temp = Fixtures.TempDirectory();
        using var device = new DeviceLikeModel(kvTokens: 2048);
        var model = device.Model;
        AssertRoundTrip(model, temp.Path);
    }

    [Fact]
    public void Int8_packets_decoded_on_the_device_hold_the_bytes_the_host_decodes()
    {
        // The int8 pages cross to the device as stored, with each block's destination, and a kernel decodes them there.
        using var temp = Fixtures.TempDirectory();
        using var device = new DeviceLikeModel(kvTokens: 2048);
        Assert.True(device.Model.DecodesInt8Blocks);
        AssertRoundTrip(device.Model, temp.Path, KvStorage.Int8);
    }

    [Fact]
    public void More_packets_than_the_staging_pool_holds_pass_through_it_in_turn()
    {
        // A 256-token cache: staging for 17 blocks, and 20 packets of 5 blocks through it (each built, stored and read
        // back, then read again by a fresh source); the staging blocks of finished copies are reused, nothing mixes up.
        using var temp = Fixtures.TempDirectory();
        using var device = new DeviceLikeModel(kvTokens: 256);
        var model = device.Model;
        var random = new SeededRandom(9);
        int[][] documents = [.. Enumerable.Range(0, 20).Select(_ => random.NextTokens(70, 3, 512))];
        using var host = new Compute.Kv.KvBlockPool(model.KvBlocks.Layout, 8);
        string path = Path.Combine(temp.Path, "store");
        var expected = BuildAndStore(model, path, documents, host);
        using (var store = PacketStore.Open(path, new PacketStoreOptions { ReadOnly = true }))
        using (var packets = new StoredPackets(model, store, residentBlockBudget: 0))
        {
            for (int i = 0; i < documents.Length; i++)
                using (var packet = packets.Acquire(documents[i], null))
                    Assert.Equal(expected[i], Bytes(model, packet, host));
            Assert.Equal(documents.Length, packets.StoreLoads);
        }
        Assert.Equal(expected.Count, expected.Select(Convert.ToBase64String).Distinct().Count());
        Assert.Equal(model.KvBlocks.BlockCount, model.KvBlocks.FreeBlockCount);
    }

    [Fact]
    public void Packets_read_ahead_are_the_packets_a_plain_load_reads_and_their_staging_comes_back()
    {
        // A device cache (ILGPU's CPU accelerator) with 17 staging blocks and packets of 5: three reads ahead fit.
        using var temp = Fixtures.TempDirectory();
        using var device = new DeviceLikeModel(kvTokens: 256);
        var model = device.Model;
        var random = new SeededRandom(11);
        int[][] documents = [.. Enumerable.Range(0, 6).Select(_ => random.NextTokens(70, 3, 512))];
        using var host = new Compute.Kv.KvBlockPool(model.KvBlocks.Layout, 8);
        string path = Path.Combine(temp.Path, "store");
        var expected = BuildAndStore(model, path, documents, host);

        using (var store = PacketStore.Open(path, new PacketStoreOptions { ReadOnly = true }))
        using (var packets = new StoredPackets(model, store, residentBlockBudget: 0))
        {
            foreach (var document in documents[..3]) packets.Prefetch(document, null);
            for (int i = 0; i < 3; i++)
                using (var packet = packets.Acquire(documents[i], null))
                    Assert.Equal(expected[i], Bytes(model, packet, host));
            Assert.Equal(3, packets.PrefetchedLoads);
            // The staging still holds those three until their copies are waited for: a read ahead that runs before an
            // acquire makes room finds none and is given up (the acquire reads the packet itself); one that runs after reads.
            foreach (var document in documents[3..]) packets.Prefetch(document, null);
            for (int i = 3; i < 6; i++)
                using (var packet = packets.Acquire(documents[i], null))
                    Assert.Equal(expected[i], Bytes(model, packet, host));
            Assert.Equal(6, packets.StoreLoads);
            Assert.InRange(packets.PrefetchedLoads, 3, 6);
            packets.Prefetch(documents[0], null);   // read ahead, never acquired: let go on dispose
        }
        Assert.Equal(model.KvBlocks.BlockCount, model.KvBlocks.FreeBlockCount);
    }

    /// <summary>The ILGPU backend over stories260K on ILGPU's CPU accelerator: a device cache, staged as a GPU's is.</summary>
    private sealed class DeviceLikeModel : IDisposable
    {
        private readonly Checkpoint _checkpoint = CheckpointLoader.Load(Stories);
        private readonly ILGPU.Context _context = ILGPU.Context.Create(builder => builder.CPU());
        private readonly ILGPU.Runtime.Accelerator _accelerator;

        public DeviceLikeModel(int kvTokens)
        {
            _accelerator = _context.CreateCPUAccelerator(0);
            Model = new Engine.Ilgpu.IlgpuTransformer(_checkpoint, _accelerator, maxTokens: 64, kvTokens: kvTokens);
        }

        public Engine.Ilgpu.IlgpuTransformer Model { get; }

        public void Dispose()
        {
            Model.Dispose();
            _accelerator.Dispose();
            _context.Dispose();
            _checkpoint.Dispose();
        }
    }

    /// <summary>Each document's packet built and stored at <paramref name="path"/>; their bytes as read back.</summary>
    private static List<byte[]> BuildAndStore(IForwardBackend model, string path, int[][] documents, Compute.Kv.KvBlockPool host)
    {
        var bytes = new List<byte[]>();
        using var store = PacketStore.Open(path);
        using var packets = new StoredPackets(model, store, residentBlockBudget: 0);
        foreach (var document in documents)
            using (var packet = packets.Acquire(document, null))
                bytes.Add(Bytes(model, packet, host));
        return bytes;
    }

    private static byte[] Bytes(IForwardBackend model, Packet packet, Compute.Kv.KvBlockPool host)
    {
        using var copy = model.ExportPacket(packet, host);
        return [.. copy.Blocks.SelectMany(b => host.BlockBytes(b).ToArray())];
    }

    [Fact]
    public void Packets_built_stored_and_loaded_answer_exactly_like_packets_built_in_memory()
    {
        using var temp = Fixtures.TempDirectory();
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request();
        var adapter = new Adapter("kvp", 1, new SeededRandom(1).NextTokens(2 * 64, -3, 3).Select(v => v * 0.1f).ToArray(),
            new SeededRandom(2).NextTokens(64, -3, 3).Select(v => v * 0.1f).ToArray(), []);
        float[] naive, kvpacket;
        using (var memory = new RagEngine(model) { Adapter = adapter, QueryLogits = LogitsFor.AllTokens })
        {
            naive = Logits(memory, request, RagMode.Naive);
            kvpacket = Logits(memory, request, RagMode.KvPacket);
        }
        int free = model.KvPool.FreeBlockCount;

        using (var store = PacketStore.Open(temp.Path))
        using (var packets = new StoredPackets(model, store))
        using (var engine = new RagEngine(model, packets) { Adapter = adapter, QueryLogits = LogitsFor.AllTokens })
        {
            Assert.Equal(naive, Logits(engine, request, RagMode.Naive));
            Assert.Equal(kvpacket, Logits(engine, request, RagMode.KvPacket));
            Assert.Equal((6, 0L), (packets.Builds, packets.StoreLoads));
            Assert.Equal(naive, Logits(engine, request, RagMode.Naive));
            Assert.Equal(3, packets.ResidentHits);
        }
        Assert.Equal(free, model.KvPool.FreeBlockCount);

        // A fresh process's view: nothing resident, everything read from the store, nothing rebuilt.
        using (var store = PacketStore.Open(temp.Path, new PacketStoreOptions { ReadOnly = true }))
        using (var packets = new StoredPackets(model, store, residentBlockBudget: 0))
        using (var engine = new RagEngine(model, packets) { Adapter = adapter, QueryLogits = LogitsFor.AllTokens })
        {
            Assert.Equal(kvpacket, Logits(engine, request, RagMode.KvPacket));
            Assert.Equal(naive, Logits(engine, request, RagMode.Naive));
            Assert.Equal((0L, 6L, 0L), (packets.Builds, packets.StoreLoads, packets.ResidentHits));
            Assert.True(packets.BytesLoaded > 0);
            Assert.Equal(6, store.Stats().Packets);
        }
        Assert.Equal(free, model.KvPool.FreeBlockCount);
    }

    [Fact]
    public void Int8_pages_cost_little_quality_and_another_model_never_sees_these_packets()
    {
        using var temp = Fixtures.TempDirectory();
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint, DType.F32);
        var request = Request();
        float[] exact;
        using (var memory = new RagEngine(model) { QueryLogits = LogitsFor.AllTokens }) exact = Logits(memory, request, RagMode.Naive);
        using var store = PacketStore.Open(temp.Path);
        using var packets = new StoredPackets(model, store, KvStorage.Int8);
        using var engine = new RagEngine(model, packets) { QueryLogits = LogitsFor.AllTokens };
        float[] int8 = Logits(engine, request, RagMode.Naive);
        // Quality cost: mean KL between the next-token distributions at each query position.
        double kl = MeanKl(exact, int8, checkpoint.Config.VocabSize);
        Assert.InRange(kl, 1e-9, 0.01);
        Assert.All(store.List(), p => Assert.Equal(KvStorage.Int8, p.Storage));

        using var other = CheckpointLoader.Load(Fixtures.PathOf("tiny-llama3"));
        var otherModel = ModelFingerprint.Of(other);
        Assert.NotEqual(packets.Fingerprint, otherModel);
        Assert.Equal(packets.Fingerprint, ModelFingerprint.Of(checkpoint));
        var id = store.List()[0].Id;
        var wrong = Assert.Throws<ModelMismatchException>(() => store.TryLoad(id, otherModel, model.KvPool, out _));
        Assert.Contains(id.ToString(), wrong.Message);
    }

    [Fact]
    public void Token_pruned_packets_round_trip_with_their_span_and_a_distinct_id()
    {
        using var temp = Fixtures.TempDirectory();
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request();
        float[] expected;
        using (var memory = new BuiltPackets(model, keep: 0.5))
        using (var engine = new RagEngine(model, memory) { QueryLogits = LogitsFor.AllTokens }) expected = Logits(engine, request, RagMode.Naive);
        using (var store = PacketStore.Open(temp.Path))
        using (var packets = new StoredPackets(model, store, keep: 0.5))
        using (var engine = new RagEngine(model, packets) { QueryLogits = LogitsFor.AllTokens })
        {
            Assert.Equal(expected, Logits(engine, request, RagMode.Naive));
            Assert.NotEqual(packets.IdOf(request.Documents[0], null), PacketId.For(packets.Fingerprint, AdapterRef.None, request.Documents[0]));
        }
        using (var store = PacketStore.Open(temp.Path, new PacketStoreOptions { ReadOnly = true }))
        using (var packets = new StoredPackets(model, store, residentBlockBudget: 0, keep: 0.5))
        using (var engine = new RagEngine(model, packets) { QueryLogits = LogitsFor.AllTokens })
        {
            Assert.All(store.List(), p => Assert.Equal((p.DocumentTokens + 1) / 2, p.KvTokens));
            Assert.All(store.List(), p => Assert.Equal(p.DocumentTokens, p.PositionSpan));
            Assert.Equal(expected, Logits(engine, request, RagMode.Naive));
            Assert.Equal(0, packets.Builds);
        }
    }

    private static double MeanKl(float[] p, float[] q, int vocab)
    {
        double total = 0;
        int rows = p.Length / vocab;
        for (int r = 0; r < rows; r++) total += ModeEvaluation.Kl(p.AsSpan(r * vocab, vocab), q.AsSpan(r * vocab, vocab));
        return total / rows;
    }
}
