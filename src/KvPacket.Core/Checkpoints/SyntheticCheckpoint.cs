using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Writes a Hugging Face checkpoint of seeded random weights at a given shape, for benchmarks at real model sizes.
/// Matrices are uniform with variance 1/in_features so activations stay in range; norms are 1.
/// The same seed always gives the same bytes.
/// </summary>
public static class SyntheticCheckpoint
{
    /// <summary>Writes <c>config.json</c> and <c>model.safetensors</c> into <paramref name="directory"/>.</summary>
    public static void Write(ModelConfig config, DType type, string directory, ulong seed)
    {
        config.Validate(directory);
        Directory.CreateDirectory(directory);
        HuggingFaceConfig.Write(config with { RopeStyle = RopeStyle.RotateHalf }, Path.Combine(directory, "config.json"));

        var names = TensorNames.HuggingFace;
        int hidden = config.HiddenSize, ffn = config.IntermediateSize;
        ulong tensorIndex = 0;
        TensorToWrite Random(string name, int rows, int columns) => Matrix(name, type, rows, columns, seed * 1_000_003 + tensorIndex++);
        var tensors = new List<TensorToWrite> { Random(names.Embedding, config.VocabSize, hidden) };
        for (int i = 0; i < config.LayerCount; i++)
        {
            string N(LayerTensor role) => names.Layer(i, role);
            tensors.Add(Ones(N(LayerTensor.AttentionNorm), hidden));
            tensors.Add(Random(N(LayerTensor.Query), config.QueryDim, hidden));
            tensors.Add(Random(N(LayerTensor.Key), config.KvDim, hidden));
            tensors.Add(Random(N(LayerTensor.Value), config.KvDim, hidden));
            tensors.Add(Random(N(LayerTensor.Output), hidden, config.QueryDim));
            if (config.AttentionBias)
            {
                tensors.Add(Bias(N(LayerTensor.QueryBias), config.QueryDim, seed + tensorIndex++));
                tensors.Add(Bias(N(LayerTensor.KeyBias), config.KvDim, seed + tensorIndex++));
                tensors.Add(Bias(N(LayerTensor.ValueBias), config.KvDim, seed + tensorIndex++));
            }
            tensors.Add(Ones(N(LayerTensor.FfnNorm), hidden));
            tensors.Add(Random(N(LayerTensor.Gate), ffn, hidden));
            tensors.Add(Random(N(LayerTensor.Up), ffn, hidden));
            tensors.Add(Random(N(LayerTensor.Down), hidden, ffn));
        }
        tensors.Add(Ones(names.FinalNorm, hidden));
        if (!config.TiedEmbeddings) tensors.Add(Random(names.Classifier, config.VocabSize, hidden));
        SafetensorsWriter.Write(Path.Combine(directory, "model.safetensors"), tensors,
            new Dictionary<string, string> { ["format"] = "pt", ["kvpacket.synthetic"] = $"seed={seed}; random weights" });
    }

    private static TensorToWrite Matrix(string name, DType type, int rows, int columns, ulong seed) =>
        new(name, type, [rows, columns], stream =>
        {
            var random = new SeededRandom(seed);
            float scale = MathF.Sqrt(3f / columns);
            var row = new float[columns];
            var bytes = new byte[type.BytesFor(columns)];
            for (int r = 0; r < rows; r++)
            {
                for (int c = 0; c < columns; c++) row[c] = (2 * random.NextSingle() - 1) * scale;
                TensorEncoding.Encode(row, type, bytes);
                stream.Write(bytes);
            }
        });

    private static TensorToWrite Ones(string name, int length) => Filled(name, length, _ => 1f);

    private static TensorToWrite Bias(string name, int length, ulong seed)
    {
        var random = new SeededRandom(seed);
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = (2 * random.NextSingle() - 1) * 0.02f;
        return Filled(name, length, i => values[i]);
    }

    private static TensorToWrite Filled(string name, int length, Func<int, float> value) =>
        new(name, DType.F32, [length], stream =>
        {
            var values = new float[length];
            for (int i = 0; i < length; i++) values[i] = value(i);
            var bytes = new byte[4 * length];
            TensorEncoding.Encode(values, DType.F32, bytes);
            stream.Write(bytes);
        });
}
