using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Tests;
using KvPacket.Training.Cuda;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>The host side of pre-training: the corpus and its seeded windows, initial weights, the written checkpoint; and, where a GPU exists, the GPU trainer against the CPU.</summary>
public class PretrainingTests
{
    private static ModelConfig Small => ModelCard.Find("stories260k").Config with { LayerCount = 2 };

    [Fact]
    public void Windows_depend_only_on_the_seed_step_and_slot_and_bad_ids_name_their_line()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "corpus.tokens");
        File.WriteAllLines(path, [.. Enumerable.Range(0, 50).Select(d => string.Join(' ', Enumerable.Range(0, 20).Select(i => 3 + (d * 31 + i * 7) % 500)))]);
        var a = PretrainingData.Read(path, 512, bos: 1, eos: 2, seed: 5);
        var b = PretrainingData.Read(path, 512, bos: 1, eos: 2, seed: 5);

        Assert.Equal(50 * 20, a.Tokens);
        Assert.Equal(a.Batch(17, 4, 32).Source, b.Batch(17, 4, 32).Source);
        Assert.NotEqual(a.Batch(17, 4, 32).Source, a.Batch(18, 4, 32).Source);
        Assert.NotEqual(a.Batch(17, 4, 32).Source, PretrainingData.Read(path, 512, 1, 2, seed: 6).Batch(17, 4, 32).Source);

        File.AppendAllLines(path, ["4 5 600"]);
        var error = Assert.Throws<InvalidDataException>(() => PretrainingData.Read(path, 512, 1, 2, 5));
        Assert.Contains(":51:", error.Message);
        Assert.Contains("'600'", error.Message);
    }

    [Fact]
    public void Examples_are_packed_whole_each_seeing_itself_from_position_zero_with_answers_weighted_up()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "qa.tokens");
        File.WriteAllLines(path, ["0 10 11 12 13 | 20 21 1", "0 30 31 | 40 1", "0 50 51 52 53 54 55 | 60 1"]);
        var data = PretrainingData.Read(path, 512, bos: 0, eos: 1, seed: 3, examples: true, answerWeight: 5);
        var batch = data.Batch(step: 7, sequences: 2, length: 24);

        Assert.Equal(3, data.Lines);
        for (int b = 0; b < batch.Sequences; b++)
        {
            int row = b * batch.Length, placed = 0;
            while (row < (b + 1) * batch.Length && batch.Targets[row] >= 0 && batch.FirstVisible[row] == row - b * batch.Length)
            {
                // One example: rows see its first row onwards, positions restart at 0, its last row predicts nothing.
                int start = row, length = 1;
                while (row + length < (b + 1) * batch.Length && batch.FirstVisible[row + length] == start - b * batch.Length && batch.Positions[row + length] == length) length++;
                Assert.Equal(-1, batch.Targets[start + length - 1]);
                Assert.Equal(5f, batch.Weights[start + length - 2]);   // predicting EOS, the answer's last token
                Assert.Equal(1f, batch.Weights[start]);                // predicting the first document token
                row += length;
                placed++;
            }
            Assert.True(placed >= 2, $"sequence {b} holds {placed} examples");
        }
        Assert.Equal(batch.Source, PretrainingData.Read(path, 512, 0, 1, 3, examples: true, answerWeight: 5).Batch(7, 2, 24).Source);
    }

    [Fact]
    public void Each_bar_switches_the_weighting_so_every_answer_counts_and_follow_up_questions_do_not()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "qa.tokens");
        // prompt | answer | follow-up question | answer
        File.WriteAllLines(path, ["0 10 11 12 | 20 21 1 | 30 31 32 | 40 1"]);
        var batch = PretrainingData.Read(path, 512, bos: 0, eos: 1, seed: 3, examples: true, answerWeight: 4).Batch(step: 0, sequences: 1, length: 16);

        // Row i predicts token i + 1: the answers' tokens (20 21 1, 40 1) are weighted, the documents' and questions' not.
        float[] expected = [1, 1, 1, 4, 4, 4, 1, 1, 1, 4, 4, 0];
        Assert.Equal(expected, batch.Weights.AsSpan(0, expected.Length).ToArray());
        Assert.Equal([10, 11, 12, 20, 21, 1, 30, 31, 32, 40, 1, -1], batch.Targets.AsSpan(0, 12).ToArray());
    }

    [Fact]
    public void A_continued_run_names_its_starting_model_so_no_other_run_resumes_its_checkpoint()
    {
        var scratch = new PretrainingOptions { Steps = 8000, Sequences = 16, Length = 2048 };
        var continued = scratch with { InitialModel = "0123abcd" };

        Assert.DoesNotContain("from", scratch.Signature(Small));
        Assert.EndsWith(", from 0123abcd", continued.Signature(Small));
        Assert.NotEqual(continued.Signature(Small), (scratch with { InitialModel = "4567ef01" }).Signature(Small));
    }

    [Fact]
    public void Trained_weights_written_as_Hugging_Face_load_back_as_the_same_model()
    {
        using var temp = Fixtures.TempDirectory();
        var weights = WeightInitialisation.Random(Small, seed: 3);
        TrainedCheckpoint.WriteHuggingFace(Small, weights, temp.Path, DType.F32);

        using var loaded = CheckpointLoader.Load(temp.Path);
        var back = TrainingWeights<float>.From(loaded);

        Assert.Equal(Small.LayerCount, loaded.Config.LayerCount);
        Assert.Equal(weights.Embedding, back.Embedding);
        Assert.Equal(weights.Layers[1].Down, back.Layers[1].Down);
        Assert.Equal(weights.Layers[0].Query, back.Layers[0].Query);
        Assert.Equal(WeightInitialisation.Random(Small, seed: 3).Layers[0].Gate, weights.Layers[0].Gate);   // seeded
        Assert.NotEqual(WeightInitialisation.Random(Small, seed: 4).Layers[0].Gate, weights.Layers[0].Gate);
    }

    [CudaFact]
    public void Gpu_gradients_in_f32_match_the_cpu_reference_within_1e3()
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("tiny-qwen2"));
        using var device = Compute.Cuda.CudaDevice.Open();
        var soft = CudaGradientCheck.SoftRows(TrainingWeights<float>.From(checkpoint), checkpoint.Config.HiddenSize, 4, seed: 9);
        foreach (var (batch, rows) in new[] { (CudaGradientCheck.CausalBatch(checkpoint.Config, 2, 24, 7), Array.Empty<float>()), (CudaGradientCheck.StudentBatch(checkpoint.Config, 2, 8), soft) })
        {
            var result = CudaGradientCheck.Run(device, checkpoint, "batch", batch, rows, DType.F32, recompute: false);
            Assert.True(result.Worst.Relative <= 1e-3, $"{result.Worst.Name}: {result.Worst.Relative}");
        }
    }
}

/// <summary>KVLink fine-tuning examples and the models it writes.</summary>
public class FineTuningTests
{
    [Fact]
    public void A_fine_tuning_example_trains_the_continuation_with_full_attention_or_as_a_kvlink_student()
    {
        var example = new FineTuningExample([1], [[10, 11, 12], [20, 21]], [30, 31, 32, 33], FirstScoredRow: 1);

        var full = example.Sequence(Engine.Rag.RagMode.Full, links: 2);
        Assert.Equal([1, 10, 11, 12, 20, 21, 30, 31, 32, 33], full.Source);
        Assert.All(full.FirstVisible, f => Assert.Equal(0, f));
        Assert.Equal([-1, -1, -1, -1, -1, -1, -1, 32, 33, -1], full.Targets);
        Assert.Equal(1f, full.Weights.Sum(), 5);

        var linked = example.Sequence(Engine.Rag.RagMode.KvLink, links: 2);
        Assert.Equal([1, 10, 11, 12, -1, -2, 20, 21, -1, -2, 30, 31, 32, 33], linked.Source);
        Assert.Equal([0, 1, 1, 1, 0, 0, 6, 6, 0, 0, 0, 0, 0, 0], linked.FirstVisible);
        Assert.Equal([32, 33], linked.Targets.Where(t => t >= 0));
        Assert.Equal(full.Targets.Where(t => t >= 0), linked.Targets.Where(t => t >= 0));
    }

    [Fact]
    public void An_interleaved_model_written_as_Hugging_Face_computes_the_same_logits()
    {
        using var temp = Fixtures.TempDirectory();
        using var original = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        TrainedCheckpoint.WriteHuggingFace(original.Config, TrainingWeights<float>.From(original), temp.Path, DType.F32);
        using var written = CheckpointLoader.Load(temp.Path);

        int[] tokens = [1, 300, 12, 8, 45, 190, 66, 21];
        int[] positions = [.. Enumerable.Range(0, tokens.Length)];
        var a = new TrainingModel<float>(original.Config, TrainingWeights<float>.From(original)).Forward(tokens, [], positions, (i, j) => j <= i);
        var b = new TrainingModel<float>(written.Config, TrainingWeights<float>.From(written)).Forward(tokens, [], positions, (i, j) => j <= i);

        Assert.Equal(RopeStyle.RotateHalf, written.Config.RopeStyle);
        Assert.True(a.Zip(b).Max(p => Math.Abs(p.First - p.Second)) <= 1e-4f);
    }
}
