using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Builds a <see cref="Checkpoint"/> from a format's tensor table: finds every tensor the config implies,
/// checks its shape, and reports the first missing or misshapen one by name.
/// </summary>
public static class CheckpointAssembler
{
    /// <summary>Assembles the checkpoint; on failure disposes <paramref name="owners"/> and throws <see cref="CheckpointFormatException"/>.</summary>
    public static Checkpoint Assemble(string file, ModelConfig config, IReadOnlyDictionary<string, WeightTensor> tensors,
        TensorNames names, List<IDisposable> owners)
    {
        try
        {
            config.Validate(file);
            WeightTensor Get(string name, int rows, int columns)
            {
                if (!tensors.TryGetValue(name, out var tensor))
                    throw new CheckpointFormatException(file, name, "tensor is missing");
                if (tensor.Rows != rows || tensor.Columns != columns)
                    throw new CheckpointFormatException(file, name, $"expected shape [{rows}, {columns}], found [{tensor.Rows}, {tensor.Columns}]");
                return tensor;
            }

            int hidden = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, ffn = config.IntermediateSize;
            var layers = new LayerWeights[config.LayerCount];
            for (int i = 0; i < layers.Length; i++)
            {
                string N(LayerTensor role) => names.Layer(i, role);
                layers[i] = new LayerWeights
                {
                    AttentionNorm = Get(N(LayerTensor.AttentionNorm), 1, hidden),
                    Query = Get(N(LayerTensor.Query), q, hidden),
                    Key = Get(N(LayerTensor.Key), kv, hidden),
                    Value = Get(N(LayerTensor.Value), kv, hidden),
                    Output = Get(N(LayerTensor.Output), hidden, q),
                    QueryBias = config.AttentionBias ? Get(N(LayerTensor.QueryBias), 1, q) : default,
                    KeyBias = config.AttentionBias ? Get(N(LayerTensor.KeyBias), 1, kv) : default,
                    ValueBias = config.AttentionBias ? Get(N(LayerTensor.ValueBias), 1, kv) : default,
                    FfnNorm = Get(N(LayerTensor.FfnNorm), 1, hidden),
                    Gate = Get(N(LayerTensor.Gate), ffn, hidden),
                    Up = Get(N(LayerTensor.Up), ffn, hidden),
                    Down = Get(N(LayerTensor.Down), hidden, ffn),
                };
            }
            var embedding = Get(names.Embedding, config.VocabSize, hidden);
            var classifier = config.TiedEmbeddings ? embedding : Get(names.Classifier, config.VocabSize, hidden);
            return new Checkpoint(file, config, embedding, layers, Get(names.FinalNorm, 1, hidden), classifier, owners);
        }
        catch
        {
            foreach (var owner in owners) owner.Dispose();
            throw;
        }
    }
}
