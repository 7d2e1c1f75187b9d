using System.Text.Json;

namespace KvPacket.Cli.Commands;

/// <summary>A stored <c>eval --task qa</c> result (JSON), read back by the commands that report on it.</summary>
internal static class QaResultFile
{
    /// <summary>The result's <paramref name="property"/> ("scores", "answers") as <typeparamref name="T"/>; a file without it is not such a result.</summary>
    public static T[] Read<T>(string path, string property)
    {
        using var json = JsonDocument.Parse(File.ReadAllBytes(path));
        if (!json.RootElement.TryGetProperty(property, out var value)) throw new InvalidDataException($"{path}: not an eval --task qa result (no '{property}')");
        return value.Deserialize<T[]>() ?? [];
    }
}
