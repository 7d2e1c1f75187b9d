using System.Text.Json;

namespace KvPacket.Tests;

/// <summary>
/// Finds the test fixtures (reference models, tokenizers and their goldens) in <c>tests/fixtures</c>, so a fresh clone
/// tests itself with nothing beside it. Each fixture folder has a SOURCE.md saying where it came from and its licence.
/// </summary>
internal static class Fixtures
{
    private static readonly Lazy<string> Repository = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "KvPacket.Native.sln")))
                return dir.FullName;
        throw new DirectoryNotFoundException("Could not find KvPacket.Native.sln above the test binaries.");
    });

    /// <summary>The path of <paramref name="relative"/> under tests/fixtures.</summary>
    public static string PathOf(string relative) => Path.Combine(Repository.Value, "tests", "fixtures", relative);

    /// <summary>The directory of a model the product ships under models/.</summary>
    public static string ShippedModel(string name) => Path.Combine(Repository.Value, "models", name);

    /// <summary>Parses a golden.json.</summary>
    public static JsonDocument Golden(string model) => JsonDocument.Parse(File.ReadAllBytes(PathOf(Path.Combine(model, "golden.json"))));

    /// <summary>A fresh temporary directory, deleted when disposed.</summary>
    public static TempDirectory TempDirectory() => new();
}

/// <summary>A temporary directory removed on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "kvpacket-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
