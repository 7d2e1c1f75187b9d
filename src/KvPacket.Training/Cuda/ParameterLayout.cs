using KvPacket.Core.Model;

namespace KvPacket.Training.Cuda;

/// <summary>
/// Where each parameter tensor lives in the GPU trainer's flat parameter vector (and so in its gradient and AdamW
/// moment vectors): the embedding, each layer's tensors in <see cref="TrainingWeights{T}.LayerParameters"/> order, the
/// final norm, the classifier (the embedding itself when tied), then the adapter rows.
/// </summary>
public sealed class ParameterLayout
{
    /// <summary>One tensor: its first element, element count, and whether AdamW decays it (matrices do; norms, biases and adapter rows do not).</summary>
    public readonly record struct Tensor(long Offset, int Count, bool Decays);

    /// <summary>One layer's tensors (biases have Count 0 when the model has none).</summary>
    public sealed record LayerTensors(Tensor AttentionNorm, Tensor Query, Tensor Key, Tensor Value, Tensor Output, Tensor FfnNorm, Tensor Gate, Tensor Up,
        Tensor Down, Tensor QueryBias, Tensor KeyBias, Tensor ValueBias)
    {
        /// <summary>The tensors in <see cref="TrainingWeights{T}.LayerParameters"/> order.</summary>
        public Tensor[] All => [AttentionNorm, Query, Key, Value, Output, FfnNorm, Gate, Up, Down, QueryBias, KeyBias, ValueBias];
    }

    /// <summary>The layout of <paramref name="config"/>'s parameters plus <paramref name="softRows"/> adapter rows.</summary>
    public ParameterLayout(ModelConfig config, int softRows)
    {
        long offset = 0;
        Tensor Take(long count, bool decays)
        {
            var tensor = new Tensor(offset, checked((int)count), decays);
            offset += count;
            return tensor;
        }
        int d = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, f = config.IntermediateSize;
        int bias = config.AttentionBias ? 1 : 0;
        Embedding = Take((long)config.VocabSize * d, true);
        Layers = [.. Enumerable.Range(0, config.LayerCount).Select(_ => new LayerTensors(
            Take(d, false), Take((long)q * d, true), Take((long)kv * d, true), Take((long)kv * d, true), Take((long)d * q, true),
            Take(d, false), Take((long)f * d, true), Take((long)f * d, true), Take((long)d * f, true),
            Take(q * bias, false), Take(kv * bias, false), Take(kv * bias, false)))];
        FinalNorm = Take(d, false);
        Classifier = config.TiedEmbeddings ? Embedding : Take((long)config.VocabSize * d, true);
        SoftRows = softRows;
        Soft = Take((long)softRows * d, false);
        Count = offset;
        Tied = config.TiedEmbeddings;
    }

    /// <summary>Token embedding [vocab, hidden].</summary>
    public Tensor Embedding { get; }
    /// <summary>Per-layer tensors.</summary>
    public LayerTensors[] Layers { get; }
    /// <summary>Final norm [hidden].</summary>
    public Tensor FinalNorm { get; }
    /// <summary>Classifier [vocab, hidden]; <see cref="Embedding"/> when tied.</summary>
    public Tensor Classifier { get; }
    /// <summary>Adapter rows [soft rows, hidden].</summary>
    public Tensor Soft { get; }
    /// <summary>Adapter rows.</summary>
    public int SoftRows { get; }
    /// <summary>Elements in all.</summary>
    public long Count { get; }
    private bool Tied { get; }

    /// <summary>Each model tensor with its values in <paramref name="weights"/>.</summary>
    public IEnumerable<(Tensor Tensor, float[] Values)> Pair(TrainingWeights<float> weights)
    {
        yield return (Embedding, weights.Embedding);
        for (int l = 0; l < Layers.Length; l++)
        {
            var w = weights.Layers[l];
            float[][] values = [w.AttentionNorm, w.Query, w.Key, w.Value, w.Output, w.FfnNorm, w.Gate, w.Up, w.Down, w.QueryBias, w.KeyBias, w.ValueBias];
            var tensors = Layers[l].All;
            for (int i = 0; i < tensors.Length; i++)
            {
                if (values[i].Length != tensors[i].Count)
                    throw new ArgumentException($"layer {l} tensor {i} has {values[i].Length} values; the model's shape needs {tensors[i].Count}");
                yield return (tensors[i], values[i]);
            }
        }
        yield return (FinalNorm, weights.FinalNorm);
        if (!Tied) yield return (Classifier, weights.Classifier);
    }

    /// <summary>The model tensors of a flat vector, as <see cref="TrainingWeights{T}"/> (a tied classifier is the embedding array).</summary>
    public TrainingWeights<float> Unpack(float[] all)
    {
        float[] Slice(Tensor t) => all.AsSpan((int)t.Offset, t.Count).ToArray();
        var embedding = Slice(Embedding);
        return new TrainingWeights<float>
        {
            Embedding = embedding,
            Layers = [.. Layers.Select(l => new TrainingWeights<float>.LayerParameters(Slice(l.AttentionNorm), Slice(l.Query), Slice(l.Key), Slice(l.Value),
                Slice(l.Output), Slice(l.FfnNorm), Slice(l.Gate), Slice(l.Up), Slice(l.Down), Slice(l.QueryBias), Slice(l.KeyBias), Slice(l.ValueBias)))],
            FinalNorm = Slice(FinalNorm),
            Classifier = Tied ? embedding : Slice(Classifier),
        };
    }

    /// <summary>The tensors an optimiser step updates: everything (<paramref name="weights"/>) or only the adapter rows.</summary>
    public IEnumerable<Tensor> Trainable(bool weights)
    {
        if (weights)
        {
            yield return Embedding;
            foreach (var layer in Layers)
                foreach (var t in layer.All)
                    if (t.Count > 0) yield return t;
            yield return FinalNorm;
            if (!Tied) yield return Classifier;
        }
        if (Soft.Count > 0) yield return Soft;
    }
}
