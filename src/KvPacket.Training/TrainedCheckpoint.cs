using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Training;

/// <summary>Writes trained weights as a Hugging Face directory (config.json + model.safetensors) that our readers load.</summary>
public static class TrainedCheckpoint
{
    /// <summary>
    /// Writes <paramref name="weights"/> of <paramref name="config"/> (q/k rows in rotate-half order, as Hugging Face stores them; an interleaved model's are reordered) into
    /// <paramref name="directory"/> with matrices in <paramref name="type"/> and norms and biases in f32.
    /// </summary>
    /// <param name="config">The model's shape.</param>
    /// <param name="weights">Its weights.</param>
    /// <param name="directory">Where config.json and the safetensors go.</param>
    /// <param name="type">The matrices' element type.</param>
    /// <param name="metadata">Extra safetensors metadata.</param>
    /// <param name="maxShardBytes">Above this many bytes of tensors, write shards of at most this size and a
    /// <c>model.safetensors.index.json</c> (as Hugging Face does for large models); 0: one file.</param>
    public static void WriteHuggingFace(ModelConfig config, TrainingWeights<float> weights, string directory, DType type, IReadOnlyDictionary<string, string>? metadata = null,
        long maxShardBytes = 0)
    {
        if (config.RopeStyle == RopeStyle.Interleaved)
        {
            // Hugging Face rotates halves: reorder each head's q/k rows (pair i's rows 2i, 2i+1 become i, i + d/2).
            weights = RotateHalf(config, weights);
            config = config with { RopeStyle = RopeStyle.RotateHalf };
        }
        Directory.CreateDirectory(directory);
        HuggingFaceConfig.Write(config, Path.Combine(directory, "config.json"));
        var names = TensorNames.HuggingFace;
        int d = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, f = config.IntermediateSize;
        var tensors = new List<TensorToWrite> { Tensor(names.Embedding, type, weights.Embedding, config.VocabSize, d) };
        for (int l = 0; l < config.LayerCount; l++)
        {
            var w = weights.Layers[l];
            string N(LayerTensor role) => names.Layer(l, role);
            tensors.Add(Tensor(N(LayerTensor.AttentionNorm), DType.F32, w.AttentionNorm, d));
            tensors.Add(Tensor(N(LayerTensor.Query), type, w.Query, q, d));
            tensors.Add(Tensor(N(LayerTensor.Key), type, w.Key, kv, d));
            tensors.Add(Tensor(N(LayerTensor.Value), type, w.Value, kv, d));
            tensors.Add(Tensor(N(LayerTensor.Output), type, w.Output, d, q));
            if (config.AttentionBias)
            {
                tensors.Add(Tensor(N(LayerTensor.QueryBias), DType.F32, w.QueryBias, q));
                tensors.Add(Tensor(N(LayerTensor.KeyBias), DType.F32, w.KeyBias, kv));
                tensors.Add(Tensor(N(LayerTensor.ValueBias), DType.F32, w.ValueBias, kv));
            }
            tensors.Add(Tensor(N(LayerTensor.FfnNorm), DType.F32, w.FfnNorm, d));
            tensors.Add(Tensor(N(LayerTensor.Gate), type, w.Gate, f, d));
            tensors.Add(Tensor(N(LayerTensor.Up), type, w.Up, f, d));
            tensors.Add(Tensor(N(LayerTensor.Down), type, w.Down, d, f));
        }
        tensors.Add(Tensor(names.FinalNorm, DType.F32, weights.FinalNorm, d));
        if (!config.TiedEmbeddings) tensors.Add(Tensor(names.Classifier, type, weights.Classifier, config.VocabSize, d));
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (metadata is not null) foreach (var (key, value) in metadata) meta[key] = value;
        long total = tensors.Sum(t => t.ByteCount);
        if (maxShardBytes <= 0 || total <= maxShardBytes)
        {
            SafetensorsWriter.Write(Path.Combine(directory, "model.safetensors"), tensors, meta);
            return;
        }
        var shards = new List<List<TensorToWrite>> { new() };
        long size = 0;
        foreach (var tensor in tensors)
        {
            if (size > 0 && size + tensor.ByteCount > maxShardBytes) { shards.Add([]); size = 0; }
            shards[^1].Add(tensor);
            size += tensor.ByteCount;
        }
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < shards.Count; i++)
        {
            string file = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            SafetensorsWriter.Write(Path.Combine(directory, file), shards[i], meta);
            foreach (var tensor in shards[i]) weightMap[tensor.Name] = file;
        }
        File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"),
            System.Text.Json.JsonSerializer.Serialize(new { metadata = new { total_size = total }, weight_map = weightMap }, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    private static TrainingWeights<float> RotateHalf(ModelConfig config, TrainingWeights<float> weights)
    {
        int hd = config.HeadDim, d = config.HiddenSize;
        float[] Permute(float[] rows, int heads, int width)
        {
            if (rows.Length == 0) return rows;
            var result = new float[rows.Length];
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < hd / 2; i++)
                {
                    Array.Copy(rows, (h * hd + 2 * i) * width, result, (h * hd + i) * width, width);
                    Array.Copy(rows, (h * hd + 2 * i + 1) * width, result, (h * hd + hd / 2 + i) * width, width);
                }
            return result;
        }
        return new TrainingWeights<float>
        {
            Embedding = weights.Embedding,
            Layers = [.. weights.Layers.Select(l => l with
            {
                Query = Permute(l.Query, config.HeadCount, d), Key = Permute(l.Key, config.KvHeadCount, d),
                QueryBias = Permute(l.QueryBias, config.HeadCount, 1), KeyBias = Permute(l.KeyBias, config.KvHeadCount, 1),
            })],
            FinalNorm = weights.FinalNorm,
            Classifier = weights.Classifier,
        };
    }

    private static TensorToWrite Tensor(string name, DType type, float[] values, params long[] shape) =>
        new(name, type, shape, stream =>
        {
            int columns = (int)shape[^1];
            var bytes = new byte[type.BytesFor(columns)];
            for (int r = 0; r < values.Length / columns; r++)
            {
                TensorEncoding.Encode(values.AsSpan(r * columns, columns), type, bytes);
                stream.Write(bytes);
            }
        });
}
