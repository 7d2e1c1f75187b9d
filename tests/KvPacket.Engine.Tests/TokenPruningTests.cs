using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using Xunit;

namespace KvPacket.Tests;

public class TokenPruningTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static Transformer Model(Checkpoint checkpoint) =>
        new(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 128 });

    private static float[] QueryLogits(Transformer model, Packet packet, int[] query)
    {
        using var sequence = model.CreateSequence();
        var logits = new float[query.Length * model.Config.VocabSize];
        model.Prefill(sequence, [1], logits);
        sequence.AppendPacket(packet);
        Assert.Equal(1 + packet.PositionSpan, sequence.Length);
        model.Prefill(sequence, query, logits, LogitsFor.AllTokens);
        return logits;
    }

    [Fact]
    public void Pruning_that_keeps_every_token_gathers_an_identical_packet()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] document = ReferenceModels.RandomTokens(41, 3), query = ReferenceModels.RandomTokens(7, 4);
        using var plain = model.BuildPacket(document);
        using var gathered = model.BuildPacket(document, keep: 0.9999);
        Assert.False(gathered.IsPruned);
        Assert.Equal(QueryLogits(model, plain, query), QueryLogits(model, gathered, query));
    }

    [Fact]
    public void Dropped_tokens_get_no_attention_and_the_attention_sink_is_kept()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] document = ReferenceModels.RandomTokens(64, 5), query = ReferenceModels.RandomTokens(7, 6);
        using var plain = model.BuildPacket(document);
        using var pruned = model.BuildPacket(document, keep: 0.5);
        Assert.True(pruned.IsPruned);
        Assert.Equal((32, 64), (pruned.Length, pruned.PositionSpan));
        Assert.Equal(2, pruned.Blocks.Count);
        // Position 0 (the attention sink) is the most attended token: pruning keeps it, so block 0 slot 0 is unchanged.
        var layout = model.KvPool.Layout;
        Assert.Equal(model.KvPool.BlockBytes(plain.Blocks[0])[..(layout.HeadDim * 4)].ToArray(), model.KvPool.BlockBytes(pruned.Blocks[0])[..(layout.HeadDim * 4)].ToArray());

        var first = QueryLogits(model, pruned, query);
        Assert.True(ReferenceModels.MaxAbs(first, QueryLogits(model, plain, query)) > 1e-3);
        // Whatever the score buffers held before (here: a long unrelated prefill), holes stay masked.
        using (var other = model.CreateSequence()) model.Prefill(other, ReferenceModels.RandomTokens(300, 7), new float[512]);
        Assert.Equal(first, QueryLogits(model, pruned, query));
    }

    [Fact]
    public void Dropping_the_last_token_equals_the_shorter_document_placed_over_the_same_span()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        int[] document = ReferenceModels.RandomTokens(33, 8), query = ReferenceModels.RandomTokens(5, 9);
        // Causal attention: the first 32 tokens' KV does not depend on the 33rd, so keeping all but the last one
        // must give exactly the packet of the first 32 tokens, spanning 33 positions.
        using var shorter = model.BuildPacket(document.AsSpan(0, 32));
        using var reference = new Packet(model.KvPool, shorter.Share().Blocks, 32, positionSpan: 33);
        var kept = Enumerable.Range(0, 32).ToArray();
        using var full = model.BuildPacket(document);
        using var gathered = new Packet(model.KvPool, TokenPruning.Gather(model.KvPool, full.Blocks, kept), 32, positionSpan: 33);
        Assert.Equal(QueryLogits(model, reference, query), QueryLogits(model, gathered, query));
    }

    [Fact]
    public void Modes_that_recompute_document_tokens_refuse_pruned_packets()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = Model(checkpoint);
        var request = new RagRequest([1], [ReferenceModels.RandomTokens(40, 10)], ReferenceModels.RandomTokens(4, 11));
        using var engine = new RagEngine(model, new BuiltPackets(model, keep: 0.5));
        Assert.Contains("pruned", Assert.Throws<ArgumentException>(() => engine.Prefill(request, RagMode.CacheBlend)).Message);
        Assert.Contains("pruned", Assert.Throws<ArgumentException>(() => engine.Prefill(request, RagMode.Epic)).Message);
        engine.Prefill(request, RagMode.Naive).Sequence.Dispose();
        engine.Packets.Dispose();
    }
}
