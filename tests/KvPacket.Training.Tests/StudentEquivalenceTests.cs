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
        using var checkpoint = CheckpointLoader.Load(SharedModels.PathOf("stories260K/stories260K.bin"));
        int[] first = [5, 17, 99, 240, 3, 61, 7], second = [300, 12, 8, 45, 190], query = [66, 21, 400];
        var request = new RagRequest([1], [first, second], query);
        using var transformer = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        using var engine = new RagEngine(transformer);
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
}
