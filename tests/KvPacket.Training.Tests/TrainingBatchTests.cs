using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Engine.Rag;
using KvPacket.Tests;
using KvPacket.Training.Cuda;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>
/// The layout logic the GPU trainer shares with the CPU: student masks and positions, batches, the loss assembly
/// (weights, scale, teacher rows, adapter rows used many times) and the parameter layout, all checked on the CPU.
/// </summary>
public class TrainingBatchTests
{
    private static DistillationExample Example(int[][] documents, int[] continuation, int vocab, int firstScored = 1)
    {
        var teacher = new float[continuation.Length * vocab];
        for (int r = 0; r < continuation.Length; r++)
            for (int v = 0; v < vocab; v++) teacher[r * vocab + v] = (float)Math.Exp(Math.Sin(r * 7 + v * 0.37)) ;
        for (int r = 0; r < continuation.Length; r++)
        {
            float sum = teacher.AsSpan(r * vocab, vocab).ToArray().Sum();
            for (int v = 0; v < vocab; v++) teacher[r * vocab + v] /= sum;
        }
        return new DistillationExample([1], documents, continuation, teacher, firstScored);
    }

    [Theory]
    [InlineData(RagMode.KvPacket)]
    [InlineData(RagMode.KvLink)]
    public void A_student_layout_sees_what_the_packets_see(RagMode mode)
    {
        var example = Example([[10, 11, 12], [20, 21], [30, 31, 32, 33]], [40, 41, 42], vocab: 64);
        var layout = StudentLayout.Of(example, mode, header: 2, trailer: 1, links: 2);

        // The rule stated independently: rows carry a segment (prefix 0, document d + 1 with its soft rows, continuation
        // last); KV Packet's soft rows belong to their packet, KVLink's links and the continuation see everything before.
        var segment = new List<int> { 0 };
        var seesAll = new List<bool> { true };
        for (int d = 0; d < example.Documents.Length; d++)
        {
            int own = mode == RagMode.KvPacket ? 2 + example.Documents[d].Length + 1 : example.Documents[d].Length;
            segment.AddRange(Enumerable.Repeat(d + 1, own));
            seesAll.AddRange(Enumerable.Repeat(false, own));
            if (mode == RagMode.KvLink)
            {
                segment.AddRange([d + 1, d + 1]);
                seesAll.AddRange([true, true]);
            }
        }
        segment.AddRange(Enumerable.Repeat(99, example.Continuation.Length));
        seesAll.AddRange(Enumerable.Repeat(true, example.Continuation.Length));

        Assert.Equal(segment.Count, layout.Length);
        for (int i = 0; i < layout.Length; i++)
            for (int j = 0; j < layout.Length; j++)
                Assert.Equal(j <= i && (seesAll[i] || segment[i] == segment[j]), layout.Visible(i, j));
        int[] adapterRows = [.. layout.Source.Where(s => s < 0).Select(s => -1 - s)];
        Assert.Equal(mode == RagMode.KvPacket ? new[] { 0, 1, 2, 0, 1, 2, 0, 1, 2 } : new[] { 0, 1, 0, 1, 0, 1 }, adapterRows);
        Assert.Equal(example.Continuation, layout.Source[layout.ContinuationStart..]);
    }

    [Fact]
    public void A_student_batch_pads_short_sequences_with_rows_that_see_only_themselves_and_score_the_continuation()
    {
        var examples = new[] { Example([[10, 11, 12]], [40, 41, 42], 64), Example([[10, 11], [20, 21, 22, 23, 24]], [40, 41], 64) };
        var layouts = examples.Select(e => StudentLayout.Of(e, RagMode.KvPacket, 1, 1, 0)).ToList();
        var batch = TrainingBatch.Students(examples, layouts, vocab: 64);

        Assert.Equal(layouts.Max(l => l.Length), batch.Length);
        int padded = layouts[0].Length;
        for (int i = padded; i < batch.Length; i++)
        {
            Assert.Equal(i, batch.FirstVisible[i]);
            Assert.Equal(0, batch.Weights[i]);
        }
        // Example 0 scores continuation rows 1 and 2 (first scored row 1), example 1 row 1: teacher rows in that order.
        int[] scored = [.. Enumerable.Range(0, batch.Rows).Where(r => batch.Weights[r] > 0)];
        Assert.Equal([layouts[0].ContinuationStart + 1, layouts[0].ContinuationStart + 2, batch.Length + layouts[1].ContinuationStart + 1], scored);
        Assert.Equal([0, 1, 2], scored.Select(r => batch.TeacherRows[r]));
        Assert.Equal(2.0, batch.TotalWeight, 6);
        Assert.Equal(examples[1].Teacher.AsSpan(64, 64).ToArray(), batch.Teacher.AsSpan(2 * 64, 64).ToArray());
    }

    [Fact]
    public void A_causal_batch_predicts_each_next_token_at_positions_from_zero()
    {
        var batch = TrainingBatch.Causal([[5, 6, 7, 8], [9, 10, 11, 12]]);
        Assert.Equal((2, 3), (batch.Sequences, batch.Length));
        Assert.Equal([5, 6, 7, 9, 10, 11], batch.Source);
        Assert.Equal([6, 7, 8, 10, 11, 12], batch.Targets);
        Assert.Equal([0, 1, 2, 0, 1, 2], batch.Positions);
        Assert.All(batch.FirstVisible, f => Assert.Equal(0, f));
    }

    [Fact]
    public void The_batch_reference_equals_the_cpu_distillation_loss_and_its_gradients_match_finite_differences()
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        var config = checkpoint.Config;
        int vocab = config.VocabSize, d = config.HiddenSize;
        var examples = new[] { Example([[5, 17, 99], [300, 12, 8, 45]], [66, 21, 400], vocab), Example([[7, 8, 9, 10]], [50, 60], vocab, firstScored: 0) };
        var options = new DistillationOptions { Mode = RagMode.KvPacket, Header = 1, Trailer = 1 };
        var distillation = new AdapterDistillation(checkpoint, options);
        var start = distillation.Initial();
        var adapter = start with { Header = [.. start.Header.Select((v, i) => v + 0.2f * MathF.Sin(i))], Trailer = [.. start.Trailer.Select((v, i) => v - 0.2f * MathF.Cos(i))] };
        var batch = TrainingBatch.Students(examples, [.. examples.Select(e => StudentLayout.Of(e, RagMode.KvPacket, 1, 1, 0))], vocab);
        double[] soft = [.. adapter.Header.Concat(adapter.Trailer).Select(v => (double)v)];
        var weights = TrainingWeights<double>.From(checkpoint);
        var gradients = new double[soft.Length];

        double loss = BatchReference<double>.Run(config, weights, batch, soft, 1 / batch.TotalWeight, null, gradients);

        double expected = examples.Average(e => distillation.Loss(e, adapter));
        Assert.Equal(expected, loss, 4);
        foreach (int i in new[] { 0, 5, d + 3, 2 * d - 1 })
        {
            double[] plus = (double[])soft.Clone(), minus = (double[])soft.Clone();
            plus[i] += 1e-5;
            minus[i] -= 1e-5;
            double numeric = (BatchReference<double>.Run(config, weights, batch, plus, 1 / batch.TotalWeight, null, new double[soft.Length])
                              - BatchReference<double>.Run(config, weights, batch, minus, 1 / batch.TotalWeight, null, new double[soft.Length])) / 2e-5;
            Assert.True(Math.Abs(numeric - gradients[i]) <= 1e-6 + 1e-5 * Math.Abs(numeric), $"adapter element {i}: analytic {gradients[i]}, numeric {numeric}");
        }
    }

    [Fact]
    public void The_parameter_layout_round_trips_weights_of_a_tied_model_with_biases()
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("tiny-qwen2"));
        var weights = TrainingWeights<float>.From(checkpoint);
        var layout = new ParameterLayout(checkpoint.Config, softRows: 3);
        var flat = new float[layout.Count];
        foreach (var (tensor, values) in layout.Pair(weights)) values.CopyTo(flat, tensor.Offset);

        var back = layout.Unpack(flat);

        Assert.Equal(checkpoint.ParameterCount + 3 * checkpoint.Config.HiddenSize, layout.Count);
        Assert.Same(back.Embedding, back.Classifier);
        Assert.Equal(weights.Embedding, back.Embedding);
        Assert.Equal(weights.Layers[1].KeyBias, back.Layers[1].KeyBias);
        Assert.Equal(weights.Layers[0].Down, back.Layers[0].Down);
        Assert.Equal(weights.FinalNorm, back.FinalNorm);
        Assert.DoesNotContain(layout.Trainable(weights: false), t => t != layout.Soft);
        Assert.Contains(layout.Trainable(weights: true), t => t == layout.Layers[1].ValueBias);
    }

    [Fact]
    public void Embedding_rows_are_grouped_by_destination_in_row_order()
    {
        var (rows, starts, destinations) = CudaTrainingModel.GroupRows([7, -1, 3, 7, -2, -1, 3, 7], tokens: true);
        Assert.Equal([-2, -1, 3, 7], destinations);
        Assert.Equal([0, 1, 3, 5, 8], starts);
        Assert.Equal([4, 1, 5, 2, 6, 0, 3, 7], rows);

        var (_, _, adapterOnly) = CudaTrainingModel.GroupRows([7, -1, 3, -1], tokens: false);
        Assert.Equal([-1], adapterOnly);
    }
}
