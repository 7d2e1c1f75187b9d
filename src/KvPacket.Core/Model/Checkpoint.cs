namespace KvPacket.Core.Model;

/// <summary>
/// A loaded model: its config and weight views, plus the memory (loaded files, native buffers) those views point into.
/// Disposing it releases that memory; views must not be used afterwards.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    private readonly IReadOnlyList<IDisposable> _owners;

    /// <summary>Assembles a checkpoint; it takes ownership of <paramref name="owners"/>.</summary>
    public Checkpoint(string source, ModelConfig config, WeightTensor tokenEmbedding, IReadOnlyList<LayerWeights> layers,
        WeightTensor finalNorm, WeightTensor classifier, IReadOnlyList<IDisposable> owners)
    {
        Source = source;
        Config = config;
        TokenEmbedding = tokenEmbedding;
        Layers = layers;
        FinalNorm = finalNorm;
        Classifier = classifier;
        _owners = owners;
    }

    /// <summary>Where the checkpoint was read from.</summary>
    public string Source { get; }
    /// <summary>Model shape and hyper-parameters.</summary>
    public ModelConfig Config { get; }
    /// <summary>Token embedding, [vocab, hidden].</summary>
    public WeightTensor TokenEmbedding { get; }
    /// <summary>The transformer blocks.</summary>
    public IReadOnlyList<LayerWeights> Layers { get; }
    /// <summary>Final RMSNorm, [1, hidden].</summary>
    public WeightTensor FinalNorm { get; }
    /// <summary>Output classifier, [vocab, hidden]; the same view as <see cref="TokenEmbedding"/> when tied.</summary>
    public WeightTensor Classifier { get; }

    /// <summary>Every matrix: the embedding table, each layer's seven, and the classifier (the embedding's view again when tied).</summary>
    public IEnumerable<WeightTensor> Matrices => Layers.SelectMany(l => l.Matrices).Prepend(TokenEmbedding).Append(Classifier);

    /// <summary>Bytes of weights a decode step reads: every matrix, the norms, and the classifier (not the embedding table).</summary>
    public long BytesReadPerToken =>
        Layers.Sum(l => l.Matrices.Sum(m => m.ByteCount) + l.AttentionNorm.ByteCount + l.FfnNorm.ByteCount
                        + l.QueryBias.ByteCount + l.KeyBias.ByteCount + l.ValueBias.ByteCount)
        + FinalNorm.ByteCount + Classifier.ByteCount;

    /// <summary>Total parameters (the classifier counted once when tied).</summary>
    public long ParameterCount =>
        Layers.Sum(l => l.Matrices.Sum(m => m.ElementCount) + l.AttentionNorm.ElementCount + l.FfnNorm.ElementCount
                        + (l.QueryBias.IsPresent ? l.QueryBias.ElementCount + l.KeyBias.ElementCount + l.ValueBias.ElementCount : 0))
        + TokenEmbedding.ElementCount + FinalNorm.ElementCount + (Config.TiedEmbeddings ? 0 : Classifier.ElementCount);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var owner in _owners) owner.Dispose();
    }
}
