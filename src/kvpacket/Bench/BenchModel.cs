using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Cli.Bench;

/// <summary>Resolves a benchmark's model: a path, or a model card synthesised once into a cache directory.</summary>
internal static class BenchModel
{
    /// <summary>
    /// The checkpoint at <paramref name="path"/>, or card <paramref name="shape"/> synthesised (keeping only
    /// <paramref name="layers"/> layers when positive); a GGUF block format is quantised from the bf16 synthesis.
    /// </summary>
    /// <summary>
    /// Runs <paramref name="body"/> with the model of <see cref="Open"/> and the GPU, both disposed after; exit code 2 with
    /// the reason when there is no GPU.
    /// </summary>
    public static int OnGpu(string? path, string? shape, DType dtype, Func<Checkpoint, string, Compute.Cuda.CudaDevice, int> body, int layers = 0)
    {
        if (!Compute.Cuda.CudaDevice.IsAvailable(out string reason)) { Console.Error.WriteLine($"no GPU: {reason}"); return 2; }
        var (checkpoint, name) = Open(path, shape, dtype, layers);
        using (checkpoint)
        using (var device = Compute.Cuda.CudaDevice.Open())
            return body(checkpoint, name, device);
    }

    public static (Checkpoint Checkpoint, string Name) Open(string? path, string? shape, DType dtype, int layers = 0)
    {
        if (path is not null) return (CheckpointLoader.Load(path), Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(path)));
        if (shape is null) throw new ArgumentException("Give --model PATH or --shape NAME.");
        var card = ModelCard.Find(shape);
        var config = layers > 0 ? card.Config with { LayerCount = layers } : card.Config;
        string name = layers > 0 ? $"{card.Name} ({layers} layers)" : card.Name;
        string Cached(DType type) => Path.Combine(Path.GetTempPath(), "kvpacket-synth", $"{card.Name}{(layers > 0 ? $"-{layers}layers" : "")}-{type}-seed1".ToLowerInvariant());
        if (dtype.IsBlockQuantised())
        {
            string gguf = Cached(dtype) + ".gguf";
            if (!File.Exists(gguf))
            {
                using var source = Open(null, shape, DType.BF16, layers).Checkpoint;
                Console.Error.WriteLine($"quantising {name} to {dtype} into {gguf} …");
                CheckpointExporter.WriteGguf(source, gguf + ".partial", dtype);
                File.Move(gguf + ".partial", gguf, overwrite: true);
            }
            return (CheckpointLoader.Load(gguf), name);
        }
        string directory = Cached(dtype);
        if (!File.Exists(Path.Combine(directory, "model.safetensors")))
        {
            Console.Error.WriteLine($"synthesising {name} ({dtype}, random weights) into {directory} …");
            SyntheticCheckpoint.Write(config, dtype, directory + ".partial", seed: 1);
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
            Directory.Move(directory + ".partial", directory);
        }
        return (CheckpointLoader.Load(directory), name);
    }
}
