using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using Xunit;

namespace KvPacket.Tests;

public class RagEngineTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static int[] Tokens(int count, ulong seed) => ReferenceModels.RandomTokens(count, seed);

    private static RagRequest Request(int documents) =>
        new([1], Enumerable.Range(0, documents).Select(d => Tokens(23 + 7 * d, 100 + (ulong)d)).ToArray(), Tokens(6, 99));

    private static float[] Logits(RagEngine engine, RagRequest request, RagMode mode)
    {
        var result = engine.Prefill(request, mode);
        result.Sequence.Dispose();
        return result.QueryLogits;
    }

    private static double MaxAbs(float[] a, float[] b) => ReferenceModels.MaxAbs(a, b);

    private static Transformer Model(Checkpoint checkpoint) =>
        new(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096, MaxBatchTokens = 64 });

    [Fact]
    public void Epic_recomputing_every_document_token_equals_full()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request(3);
        using var everything = new RagEngine(model) { EpicRecomputeTokens = int.MaxValue, QueryLogits = LogitsFor.AllTokens };
        using var partial = new RagEngine(model) { EpicRecomputeTokens = 5, QueryLogits = LogitsFor.AllTokens };

        var full = Logits(everything, request, RagMode.Full);

        Assert.Equal(full, Logits(everything, request, RagMode.Epic));
        Assert.InRange(MaxAbs(full, Logits(partial, request, RagMode.Epic)), 1e-4, double.MaxValue);
    }

    [Fact]
    public void CacheBlend_recomputing_every_token_equals_full_and_recomputing_none_equals_naive()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request(3);
        using var all = new RagEngine(model) { CacheBlendFraction = 1.0, QueryLogits = LogitsFor.AllTokens };
        using var none = new RagEngine(model) { CacheBlendFraction = 0.0, QueryLogits = LogitsFor.AllTokens };
        using var some = new RagEngine(model) { CacheBlendFraction = 0.3, QueryLogits = LogitsFor.AllTokens };
        using var packet = all.Packets.Acquire(request.Documents[0], null);
        var before = model.KvPool.BlockBytes(packet.Blocks[0]).ToArray();

        var full = Logits(all, request, RagMode.Full);
        var naive = Logits(none, request, RagMode.Naive);

        Assert.InRange(MaxAbs(full, Logits(all, request, RagMode.CacheBlend)), 0, 1e-4);
        Assert.InRange(MaxAbs(naive, Logits(none, request, RagMode.CacheBlend)), 0, 1e-4);
        var partial = Logits(some, request, RagMode.CacheBlend);
        Assert.InRange(MaxAbs(full, partial), 1e-4, double.MaxValue);
        Assert.InRange(MaxAbs(naive, partial), 1e-4, double.MaxValue);
        Assert.Equal(before, model.KvPool.BlockBytes(packet.Blocks[0]).ToArray());   // the shared packet is never written
    }

    [Fact]
    public void With_one_document_and_no_prefix_naive_equals_full_and_KVLink_without_links_equals_naive()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var one = Request(1) with { Prefix = [] };   // a prefix would be context the packet never saw
        var three = Request(3);
        using var engine = new RagEngine(model) { Adapter = Adapter.Untrained("none", 64, 0, 0, 0), QueryLogits = LogitsFor.AllTokens };

        Assert.InRange(MaxAbs(Logits(engine, one, RagMode.Full), Logits(engine, one, RagMode.Naive)), 0, 1e-4);
        Assert.Equal(Logits(engine, three, RagMode.Naive), Logits(engine, three, RagMode.KvLink));
    }

    [Fact]
    public void Each_mode_reports_what_it_computed_at_query_time()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request(3);
        int documentTokens = request.Documents.Sum(d => d.Length);
        using var engine = new RagEngine(model) { Adapter = Adapter.Untrained("a", 64, 2, 2, 3), EpicRecomputeTokens = 4, QueryLogits = LogitsFor.AllTokens };

        var results = Enum.GetValues<RagMode>().ToDictionary(m => m, m => engine.Prefill(request, m));
        foreach (var r in results.Values) r.Sequence.Dispose();

        // The BOS prefix is a cached packet in every mode: not computed at query time.
        Assert.Equal(documentTokens + 6, results[RagMode.Full].PrefilledTokens);
        Assert.Equal(6, results[RagMode.Naive].PrefilledTokens);
        Assert.Equal(6, results[RagMode.KvPacket].PrefilledTokens);
        Assert.Equal(3 * 3 + 6, results[RagMode.KvLink].PrefilledTokens);
        Assert.Equal(3 * 4 + 6, results[RagMode.Epic].PrefilledTokens);
        Assert.True(results[RagMode.CacheBlend].DocumentFlops < results[RagMode.Full].DocumentFlops);
        Assert.True(results[RagMode.CacheBlend].DocumentFlops > results[RagMode.Epic].DocumentFlops);
        Assert.Equal(0, results[RagMode.Naive].DocumentFlops);
        Assert.Equal(0, results[RagMode.KvPacket].DocumentFlops);
        Assert.True(results[RagMode.Full].DocumentFlops > results[RagMode.Epic].DocumentFlops);
        Assert.True(results[RagMode.Epic].DocumentFlops > results[RagMode.KvLink].DocumentFlops);
        Assert.True(results[RagMode.KvLink].DocumentFlops > 0);
        Assert.Equal(0, results[RagMode.Full].PacketKvBytes);
        Assert.True(results[RagMode.KvPacket].PacketKvBytes > 0);
    }

    [Fact]
    public void A_cached_prefix_gives_what_prefilling_it_with_the_request_gives()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = Request(3) with { Prefix = [1, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317] };
        var cached = new RagEngine(model) { QueryLogits = LogitsFor.AllTokens };
        var prefilled = new RagEngine(model) { QueryLogits = LogitsFor.AllTokens, CachePrefix = false };
        foreach (var mode in new[] { RagMode.Full, RagMode.Naive, RagMode.Epic })
        {
            var a = cached.Prefill(request, mode);
            var b = prefilled.Prefill(request, mode);
            a.Sequence.Dispose();
            b.Sequence.Dispose();
            Assert.Equal(b.PrefilledTokens - request.Prefix.Length, a.PrefilledTokens);
            // The prefix's last block is partly filled, so what follows starts a block of its own: only summation order differs.
            Assert.True(ReferenceModels.MaxAbs(a.QueryLogits, b.QueryLogits) < 1e-4, $"{mode}: {ReferenceModels.MaxAbs(a.QueryLogits, b.QueryLogits)}");
        }
        cached.Dispose();
        prefilled.Dispose();
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);   // the prefix packet goes with its engine
    }

    [Fact]
    public void Evaluation_scores_full_and_complete_EPIC_as_identical_to_full_and_naive_as_different()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        using var engine = new RagEngine(model) { EpicRecomputeTokens = int.MaxValue, QueryLogits = LogitsFor.AllTokens };
        var requests = new[] { Request(2), Request(3) };

        var scores = ModeEvaluation.Run(model, engine, requests, [RagMode.Full, RagMode.Epic, RagMode.Naive], continuation: 6);

        Assert.Equal(0, scores[0].MeanKl);
        Assert.Equal(1, scores[0].TopOneAgreement);
        Assert.Equal(0, scores[1].MeanKl);
        Assert.True(scores[2].MeanKl > 1e-3);
        Assert.Equal(0, scores[2].MeanDocumentFlops);
        Assert.True(scores[0].MeanDocumentFlops > 0);
    }

    [Fact]
    public void Adapter_modes_without_an_adapter_are_clear_errors()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        using var engine = new RagEngine(model) { QueryLogits = LogitsFor.AllTokens };
        Assert.Contains("adapter", Assert.Throws<InvalidOperationException>(() => engine.Prefill(Request(1), RagMode.KvPacket)).Message);
        Assert.Contains("adapter", Assert.Throws<InvalidOperationException>(() => engine.Prefill(Request(1), RagMode.KvLink)).Message);
        int packetBlocks = CountPacketBlocks(engine, Request(1));
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount + packetBlocks);
    }

    private static int CountPacketBlocks(RagEngine engine, RagRequest request) => request.Documents.Sum(d =>
    {
        using var packet = engine.Packets.Acquire(d, null);
        return packet.Blocks.Count;
    });
}
