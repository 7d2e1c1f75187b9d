using System.Reflection;
using System.Text.Json;
using KvPacket.Core.Checkpoints;

namespace KvPacket.Core.Model;

/// <summary>
/// A supported model shape from <c>models/*.json</c> (embedded in this assembly). A card is a transformers-style
/// config (the same keys as <c>config.json</c>) plus a <c>name</c>.
/// </summary>
public sealed record ModelCard(string Name, ModelConfig Config)
{
    private const string ResourcePrefix = "models/";

    /// <summary>All embedded cards, by name.</summary>
    public static IReadOnlyList<ModelCard> All { get; } = LoadAll();

    /// <summary>The card called <paramref name="name"/> (case-insensitive).</summary>
    public static ModelCard Find(string name) =>
        All.FirstOrDefault(c => string.Equals(c.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"No model card '{name}'. Known: {string.Join(", ", All.Select(c => c.Name))}.", nameof(name));

    /// <summary>Parses one card.</summary>
    public static ModelCard Parse(string source, ReadOnlySpan<byte> json)
    {
        var reader = new Utf8JsonReader(json);
        using var document = JsonDocument.ParseValue(ref reader);
        string name = document.RootElement.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String
            ? n.GetString()!
            : throw new CheckpointFormatException(source, "name", "is missing");
        var config = HuggingFaceConfig.Parse(source, document.RootElement);
        config.Validate(source);
        return new ModelCard(name, config);
    }

    private static ModelCard[] LoadAll()
    {
        var assembly = Assembly.GetExecutingAssembly();
        return assembly.GetManifestResourceNames()
            .Where(r => r.StartsWith(ResourcePrefix, StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(r =>
            {
                using var stream = assembly.GetManifestResourceStream(r)!;
                using var memory = new MemoryStream();
                stream.CopyTo(memory);
                return Parse(r, memory.ToArray());
            })
            .ToArray();
    }
}
