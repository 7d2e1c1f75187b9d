using System.Text.Json;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Reads a Hugging Face model directory: <c>config.json</c> plus <c>model.safetensors</c>, or shards listed in
/// <c>model.safetensors.index.json</c>. Weights are used as the files hold them, loaded into memory (<see cref="Memory.FileBytes.Load(string)"/>).
/// </summary>
public static class HuggingFaceCheckpointReader
{
    /// <summary>Loads the model in <paramref name="directory"/>.</summary>
    public static Checkpoint Read(string directory)
    {
        string configPath = Path.Combine(directory, "config.json");
        if (!File.Exists(configPath)) throw new CheckpointFormatException(directory, "config.json", "file is missing");
        var config = HuggingFaceConfig.Read(configPath);
        config.Validate(configPath);   // before any size from it is used

        var owners = new List<IDisposable>();
        var tensors = new Dictionary<string, WeightTensor>();
        try
        {
            foreach (string shard in ShardPaths(directory))
            {
                var file = SafetensorsFile.Open(shard);
                owners.Add(file);
                foreach (var (name, tensor) in file.Tensors) tensors[name] = tensor;
            }
        }
        catch
        {
            foreach (var owner in owners) owner.Dispose();
            throw;
        }
        return CheckpointAssembler.Assemble(directory, config, tensors, TensorNames.HuggingFace, owners);
    }

    private static IEnumerable<string> ShardPaths(string directory)
    {
        string single = Path.Combine(directory, "model.safetensors");
        if (File.Exists(single)) return [single];
        string index = Path.Combine(directory, "model.safetensors.index.json");
        if (!File.Exists(index)) throw new CheckpointFormatException(directory, "model.safetensors", "neither model.safetensors nor model.safetensors.index.json exists");
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(index));
            if (!document.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException(index, "weight_map", "is missing");
            return map.EnumerateObject().Select(e => e.Value.GetString() ?? "").Distinct()
                .Select(shard => Path.Combine(directory, shard)).ToArray();
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(index, "index", $"is not valid JSON ({e.Message})", e);
        }
    }
}
