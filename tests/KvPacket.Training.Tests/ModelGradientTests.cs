using KvPacket.Core.Model;
using KvPacket.Training;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>
/// The whole model's backward pass on a tiny random configuration, in the shape KV Packet distillation uses it: two
/// packets of [header, document, trailer] each seeing only itself, then a continuation seeing everything, with the loss
/// KL(teacher ‖ model) over the continuation rows. Gradients with respect to the soft (adapter) rows and to weights are
/// checked against finite differences in float64; float32 agrees with float64 to 1e-3.
/// </summary>
public class ModelGradientTests
{
    private static readonly ModelConfig Config = new()
    {
        HiddenSize = 8, IntermediateSize = 12, LayerCount = 2, HeadCount = 2, KvHeadCount = 1, HeadDim = 4, VocabSize = 11,
        MaxContextLength = 64, RopeTheta = 10000, NormEpsilon = 1e-5, TiedEmbeddings = true, AttentionBias = true,
    };

    // Packet 1 = rows 0..4 (soft, 3 tokens, soft), packet 2 = rows 5..8 (soft, 2 tokens, soft), continuation rows 9..11.
    private static readonly int[] Tokens = [-1, 3, 7, 2, -1, -1, 5, 9, -1, 4, 1, 6];
    private static readonly int[] Positions = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    private static bool Visible(int i, int j) => j <= i && (i >= 9 || (i < 5) == (j < 5));
    private const int SoftRows = 4, FirstScored = 9;

    private static TrainingWeights<T> Weights<T>(int seed) where T : System.Numerics.IFloatingPointIeee754<T>
    {
        var random = new Random(seed);
        T[] R(int n, double scale = 0.5) => Enumerable.Range(0, n).Select(_ => T.CreateChecked((random.NextDouble() * 2 - 1) * scale)).ToArray();
        T[] Norm(int n) => Enumerable.Range(0, n).Select(_ => T.CreateChecked(1 + (random.NextDouble() - 0.5) * 0.2)).ToArray();
        var c = Config;
        var embedding = R(c.VocabSize * c.HiddenSize, 1);
        return new TrainingWeights<T>
        {
            Embedding = embedding,
            Layers = [.. Enumerable.Range(0, c.LayerCount).Select(_ => new TrainingWeights<T>.LayerParameters(
                Norm(c.HiddenSize), R(c.QueryDim * c.HiddenSize), R(c.KvDim * c.HiddenSize), R(c.KvDim * c.HiddenSize), R(c.HiddenSize * c.QueryDim),
                Norm(c.HiddenSize), R(c.IntermediateSize * c.HiddenSize), R(c.IntermediateSize * c.HiddenSize), R(c.HiddenSize * c.IntermediateSize),
                R(c.QueryDim, 0.1), R(c.KvDim, 0.1), R(c.KvDim, 0.1)))],
            FinalNorm = Norm(c.HiddenSize),
            Classifier = embedding,
        };
    }

    private static double[][] Teacher()
    {
        var random = new Random(99);
        return Enumerable.Range(0, Tokens.Length - FirstScored).Select(_ =>
        {
            var p = Enumerable.Range(0, Config.VocabSize).Select(_ => Math.Exp(random.NextDouble() * 3)).ToArray();
            double z = p.Sum();
            return p.Select(v => v / z).ToArray();
        }).ToArray();
    }

    /// <summary>Loss and (when asked) its gradients for the soft rows and the weights.</summary>
    private static T Loss<T>(TrainingModel<T> model, T[] soft, T[]? dSoft, TrainingWeights<T>? dWeights) where T : System.Numerics.IFloatingPointIeee754<T>
    {
        var teacher = Teacher();
        int vocab = Config.VocabSize;
        var logits = model.Forward(Tokens, soft, Positions, Visible);
        var dLogits = new T[logits.Length];
        T loss = T.Zero;
        for (int r = FirstScored; r < Tokens.Length; r++)
            loss += Ops<T>.KlDivergence(teacher[r - FirstScored].Select(T.CreateChecked).ToArray(), logits.AsSpan(r * vocab, vocab), dLogits.AsSpan(r * vocab, vocab), T.One);
        if (dSoft is not null) model.Backward(dLogits, dSoft, dWeights);
        return loss;
    }

    private static void CheckAgainstFiniteDifferences(string what, double[] parameters, double[] analytic, Func<double> loss, int samples = 24)
    {
        var random = new Random(what.Length);
        var indices = Enumerable.Range(0, parameters.Length).OrderBy(_ => random.Next()).Take(samples).ToArray();
        double difference = 0, norm = 0;
        foreach (int i in indices)
        {
            double saved = parameters[i];
            parameters[i] = saved + 1e-5;
            double plus = loss();
            parameters[i] = saved - 1e-5;
            double minus = loss();
            parameters[i] = saved;
            double numeric = (plus - minus) / 2e-5;
            difference += (numeric - analytic[i]) * (numeric - analytic[i]);
            norm += numeric * numeric;
        }
        Assert.True(norm > 1e-12, $"{what}: zero gradient");
        Assert.True(Math.Sqrt(difference / norm) <= 1e-6, $"{what}: relative error {Math.Sqrt(difference / norm):E2}");
    }

    [Fact]
    public void Soft_row_and_weight_gradients_of_the_whole_model_match_finite_differences()
    {
        var weights = Weights<double>(1);
        var model = new TrainingModel<double>(Config, weights);
        var soft = Enumerable.Range(0, SoftRows * Config.HiddenSize).Select(i => Math.Sin(i * 0.7)).ToArray();
        var dSoft = new double[soft.Length];
        var dWeights = weights.ZerosLike();
        Loss(model, soft, dSoft, dWeights);
        double Value() => Loss<double>(model, soft, null, null);

        CheckAgainstFiniteDifferences("soft rows", soft, dSoft, Value, samples: soft.Length);
        CheckAgainstFiniteDifferences("layer 0 query", weights.Layers[0].Query, dWeights.Layers[0].Query, Value);
        CheckAgainstFiniteDifferences("layer 0 key bias", weights.Layers[0].KeyBias, dWeights.Layers[0].KeyBias, Value);
        CheckAgainstFiniteDifferences("layer 1 ffn norm", weights.Layers[1].FfnNorm, dWeights.Layers[1].FfnNorm, Value);
        CheckAgainstFiniteDifferences("layer 1 down", weights.Layers[1].Down, dWeights.Layers[1].Down, Value);
        CheckAgainstFiniteDifferences("tied embedding and classifier", weights.Embedding, dWeights.Embedding, Value, samples: 40);
    }

    [Fact]
    public void Recomputed_activations_give_the_same_gradients_as_kept_ones()
    {
        var soft = Enumerable.Range(0, SoftRows * Config.HiddenSize).Select(i => Math.Sin(i * 0.7)).ToArray();
        (double Loss, double[] Soft, TrainingWeights<double> Weights) Run(bool recompute)
        {
            var weights = Weights<double>(1);
            var model = new TrainingModel<double>(Config, weights) { RecomputeActivations = recompute };
            var dSoft = new double[soft.Length];
            var dWeights = weights.ZerosLike();
            return (Loss(model, soft, dSoft, dWeights), dSoft, dWeights);
        }
        var kept = Run(false);
        var recomputed = Run(true);
        Assert.Equal(kept.Loss, recomputed.Loss);
        Assert.Equal(kept.Soft, recomputed.Soft);
        Assert.Equal(kept.Weights.Layers[0].Query, recomputed.Weights.Layers[0].Query);
        Assert.Equal(kept.Weights.Layers[1].Down, recomputed.Weights.Layers[1].Down);
        Assert.Equal(kept.Weights.Embedding, recomputed.Weights.Embedding);
        Assert.Contains(kept.Soft, v => v != 0);
    }

    [Fact]
    public void Float32_gradients_agree_with_float64_within_1e3()
    {
        var model64 = new TrainingModel<double>(Config, Weights<double>(1));
        var model32 = new TrainingModel<float>(Config, Weights<float>(1));
        double[] soft64 = Enumerable.Range(0, SoftRows * Config.HiddenSize).Select(i => Math.Sin(i * 0.7)).ToArray();
        float[] soft32 = soft64.Select(v => (float)v).ToArray();
        var d64 = new double[soft64.Length];
        var d32 = new float[soft32.Length];
        double loss64 = Loss(model64, soft64, d64, null);
        float loss32 = Loss(model32, soft32, d32, null);
        Assert.True(Math.Abs(loss64 - loss32) / loss64 <= 1e-3, $"loss {loss64} vs {loss32}");
        double difference = Math.Sqrt(d64.Zip(d32, (a, b) => (a - b) * (a - b)).Sum()), norm = Math.Sqrt(d64.Sum(v => v * v));
        Assert.True(difference / norm <= 1e-3, $"relative gradient error {difference / norm:E2}");
    }
}
