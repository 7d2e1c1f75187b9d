using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Tests;

/// <summary>Runs models and compares their logits with golden references.</summary>
internal static class ReferenceModels
{
    /// <summary>Logits at every position of <paramref name="tokens"/>, computed in one prefill chunk.</summary>
    public static float[] AllLogits(Checkpoint model, ReadOnlySpan<int> tokens, DType kvType = DType.F32)
    {
        using var transformer = new Transformer(model, new TransformerOptions { KvType = kvType, KvCacheTokens = 1024, MaxBatchTokens = 256 });
        using var sequence = transformer.CreateSequence();
        var batch = new ForwardBatch(256, 1);
        batch.Add(sequence, tokens, LogitsFor.AllTokens);
        var logits = new float[tokens.Length * model.Config.VocabSize];
        transformer.Forward(batch, logits);
        return logits;
    }

    /// <summary>The golden tokens and per-position logits of a golden.json with a top-level or "logits" object.</summary>
    public static (int[] Tokens, double[][] Logits) GoldenLogits(string model)
    {
        using var golden = Fixtures.Golden(model);
        var root = golden.RootElement.TryGetProperty("logits", out var nested) && nested.ValueKind == JsonValueKind.Object ? nested : golden.RootElement;
        int[] tokens = root.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        double[][] logits = root.GetProperty("logits_per_position").EnumerateArray()
            .Select(row => row.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray();
        return (tokens, logits);
    }

    /// <summary>
    /// A seeded f32 Llama 256 wide (k-quant rows are whole 256-value super-blocks), 2 layers, vocabulary 512, written as
    /// safetensors under <paramref name="directory"/> and loaded.
    /// </summary>
    public static Checkpoint BlockWideModel(string directory)
    {
        var config = new ModelConfig
        {
            HiddenSize = 256, IntermediateSize = 512, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, HeadDim = 64, VocabSize = 512, MaxContextLength = 512,
        };
        SyntheticCheckpoint.Write(config, DType.F32, Path.Combine(directory, "f32"), seed: 5);
        return CheckpointLoader.Load(Path.Combine(directory, "f32"));
    }

    /// <summary><paramref name="checkpoint"/> written as a GGUF of <paramref name="type"/> in <paramref name="directory"/> and loaded from it.</summary>
    public static Checkpoint WriteGguf(Checkpoint checkpoint, string directory, DType type)
    {
        string path = Path.Combine(directory, $"model-{type}.gguf");
        CheckpointExporter.WriteGguf(checkpoint, path, type);
        return CheckpointLoader.Load(path);
    }

    /// <summary>Seeded random token ids of stories260K's vocabulary, past the BOS/EOS/byte-control range.</summary>
    public static int[] RandomTokens(int count, ulong seed) => new KvPacket.Core.Numerics.SeededRandom(seed).NextTokens(count, 3, 512);

    /// <summary>Largest |a − b|.</summary>
    public static double MaxAbs(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs((double)x - y)).Max();

    /// <summary>Largest |actual − expected| over all positions.</summary>
    public static double MaxAbsDifference(float[] actual, double[][] expected)
    {
        int vocab = expected[0].Length;
        double max = 0;
        for (int p = 0; p < expected.Length; p++)
            for (int v = 0; v < vocab; v++)
                max = Math.Max(max, Math.Abs(actual[p * vocab + v] - expected[p][v]));
        return max;
    }
}
