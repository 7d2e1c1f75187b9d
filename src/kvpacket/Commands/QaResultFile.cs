using System.IO.Compression;
using System.Text.Json;

namespace KvPacket.Cli.Commands;

/// <summary>A stored <c>eval --task qa</c> result (JSON, or gzipped JSON as the repository keeps them), read back by the commands that report on it.</summary>
internal static class QaResultFile
{
    /// <summary>The result's <paramref name="property"/> ("scores", "answers") as <typeparamref name="T"/>; a file without it is not such a result.</summary>
    public static T[] Read<T>(string path, string property)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes is [0x1F, 0x8B, ..])
        {
            using var unzipped = new MemoryStream();
            using (var gzip = new GZipStream(new MemoryStream(bytes), CompressionMode.Decompress)) gzip.CopyTo(unzipped);
            bytes = unzipped.ToArray();
        }
        JsonDocument json;
        try { json = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not an eval --task qa result (not JSON: {e.Message})", e); }
        using (json)
        {
            if (!json.RootElement.TryGetProperty(property, out var value)) throw new InvalidDataException($"{path}: not an eval --task qa result (no '{property}')");
            return value.Deserialize<T[]>() ?? [];
        }
    }
}
