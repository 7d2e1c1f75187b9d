using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Cli.Bench;

/// <summary>Resolves a benchmark's model: a path, or a model card synthesised once into a cache directory.</summary>
internal static class BenchModel
{
    public static (Checkpoint Checkpoint, string Name) Open(string? path, string? shape, DType dtype)
    {
        if (path is not null) return (CheckpointLoader.Load(path), Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(path)));
        if (shape is null) throw new ArgumentException("Give --model PATH or --shape NAME.");
        var card = ModelCard.Find(shape);
        string directory = Path.Combine(Path.GetTempPath(), "kvpacket-synth", $"{card.Name}-{dtype}-seed1".ToLowerInvariant());
        if (!File.Exists(Path.Combine(directory, "model.safetensors")))
        {
            Console.Error.WriteLine($"synthesising {card.Name} ({dtype}, random weights) into {directory} …");
            SyntheticCheckpoint.Write(card.Config, dtype, directory + ".partial", seed: 1);
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
            Directory.Move(directory + ".partial", directory);
        }
        return (CheckpointLoader.Load(directory), card.Name);
    }
}
