using KvPacket.Core.Model;
using KvPacket.Core.Numerics;

namespace KvPacket.Training;

/// <summary>
/// Seeded initial weights for training from scratch, GPT-2 style: matrices with standard deviation 0.02 (uniform, so
/// the same seed gives the same bits everywhere), the residual branches' output projections (attention output, FFN
/// down) scaled by 1/√(2·layers) so the residual stream's variance does not grow with depth, norms 1, biases 0.
/// </summary>
public static class WeightInitialisation
{
    /// <summary>Initial weights of <paramref name="config"/> from <paramref name="seed"/>.</summary>
    public static TrainingWeights<float> Random(ModelConfig config, ulong seed)
    {
        int d = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, f = config.IntermediateSize;
        double residualScale = 1 / Math.Sqrt(2.0 * config.LayerCount);
        ulong tensor = 0;
        float[] Matrix(long count, double std)
        {
            var random = new SeededRandom(seed * 0x9E3779B97F4A7C15UL + ++tensor);
            float half = (float)(std * Math.Sqrt(3));
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = (2 * random.NextSingle() - 1) * half;
            return values;
        }
        static float[] Ones(int count) => Enumerable.Repeat(1f, count).ToArray();
        float[] Bias(int count) => config.AttentionBias ? new float[count] : [];
        var embedding = Matrix((long)config.VocabSize * d, 0.02);
        return new TrainingWeights<float>
        {
            Embedding = embedding,
            Layers = [.. Enumerable.Range(0, config.LayerCount).Select(_ => new TrainingWeights<float>.LayerParameters(
                Ones(d), Matrix((long)q * d, 0.02), Matrix((long)kv * d, 0.02), Matrix((long)kv * d, 0.02), Matrix((long)d * q, 0.02 * residualScale),
                Ones(d), Matrix((long)f * d, 0.02), Matrix((long)f * d, 0.02), Matrix((long)d * f, 0.02 * residualScale), Bias(q), Bias(kv), Bias(kv)))],
            FinalNorm = Ones(d),
            Classifier = config.TiedEmbeddings ? embedding : Matrix((long)config.VocabSize * d, 0.02),
        };
    }
}
