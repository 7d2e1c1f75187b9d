using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>
/// The distillation student is one sequence with global positions and a mask that keeps each document to itself. That
/// must be exactly what the engine computes with packets built alone and placed side by side (RoPE sees only relative
/// positions): checked on stories260K against RagEngine's naive mode.
/// </summary>
public class StudentEquivalenceTests
{
    [Fact]
    public void The_masked_single_sequence_student_equals_the_engines_packets()
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        int[] first = [5, 17, 99, 240, 3, 61, 7], second = [300, 12, 8, 45, 190], query = [66, 21, 400];
        var request = new RagRequest([1], [first, second], query);
        using var transformer = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        using var engine = new RagEngine(transformer) { QueryLogits = LogitsFor.AllTokens };
        var result = engine.Prefill(request, RagMode.Naive);
        result.Sequence.Dispose();

        // Rows: BOS (its own segment, as the engine computes the prefix first), then each document, then the query.
        int[] tokens = [1, .. first, .. second, .. query];
        int[] segment = [0, .. first.Select(_ => 1), .. second.Select(_ => 2), .. query.Select(_ => 3)];
        var positions = Enumerable.Range(0, tokens.Length).ToArray();
        bool Visible(int i, int j) => j <= i && (segment[i] == segment[j] || segment[i] == 3);
        var model = new TrainingModel<double>(checkpoint.Config, TrainingWeights<double>.From(checkpoint));
        var logits = model.Forward(tokens, [], positions, Visible);

        int vocab = checkpoint.Config.VocabSize, firstQuery = tokens.Length - query.Length;
        double worst = 0;
        for (int r = 0; r < query.Length; r++)
            for (int v = 0; v < vocab; v++)
                worst = Math.Max(worst, Math.Abs(logits[(firstQuery + r) * vocab + v] - result.QueryLogits[r * vocab + v]));
        Assert.True(worst <= 1e-4, $"max |Δlogit| {worst}");
    }

    [Theory]
    [InlineData(RagMode.KvPacket)]
    [InlineData(RagMode.KvLink)]
    public void The_distillation_loss_is_the_kl_of_the_engines_prefill_in_that_mode(RagMode mode)
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        using var transformer = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        int[][] documents = [[5, 17, 99, 240, 3, 61, 7], [300, 12, 8, 45, 190]];
        int[] query = [66, 21, 400, 9];
        var example = DistillationExample.Create(transformer, [1], documents, query);
        var distillation = new AdapterDistillation(checkpoint, new DistillationOptions { Mode = mode, Header = 2, Trailer = 1, Links = 3 });
        // An adapter unlike the initial one in every row, so a row placed wrongly would show.
        var start = distillation.Initial();
        float[] Perturbed(float[] rows) => [.. rows.Select((v, i) => v + 0.3f * MathF.Sin(i * 1.7f))];
        var adapter = start with { Header = Perturbed(start.Header), Trailer = Perturbed(start.Trailer), Links = Perturbed(start.Links) };

        using var engine = new RagEngine(transformer) { Adapter = adapter, QueryLogits = LogitsFor.AllTokens };
        var result = engine.Prefill(example.AsRequest(), mode);
        result.Sequence.Dispose();
        int vocab = checkpoint.Config.VocabSize;
        double kl = 0;
        for (int r = 0; r < query.Length; r++)
            kl += Ops<double>.KlDivergence([.. example.Teacher.AsSpan(r * vocab, vocab).ToArray().Select(v => (double)v)],
                [.. result.QueryLogits.AsSpan(r * vocab, vocab).ToArray().Select(v => (double)v)], default, 1.0);
        double loss = distillation.Loss(example, adapter);
        Assert.True(kl / query.Length > 0.01, "the adapter should change the distributions");
        Assert.True(Math.Abs(loss - kl / query.Length) <= 1e-4, $"distillation loss {loss} vs engine KL {kl / query.Length}");
    }
}
