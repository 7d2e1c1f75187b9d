using System.Text.Json;

namespace KvPacket.Training;

/// <summary>
/// Named float32 arrays and JSON metadata written to a directory (<c>tensors.bin</c>, little-endian, and
/// <c>index.json</c> with each array's offset and length), so a Python script can check our numbers against another
/// implementation (numpy.fromfile + the index).
/// </summary>
public sealed class TensorDump(string directory)
{
    private readonly List<(string Name, float[] Values)> _arrays = [];
    private readonly Dictionary<string, object> _metadata = new();

    /// <summary>Where the dump is written.</summary>
    public string Directory { get; } = directory;

    /// <summary>Whether an array of that name was added.</summary>
    public bool Has(string name) => _arrays.Any(a => a.Name == name);

    /// <summary>Adds an array.</summary>
    public void Add(string name, float[] values) => _arrays.Add((name, values));

    /// <summary>Sets a metadata entry (anything System.Text.Json serialises).</summary>
    public void Set(string key, object value) => _metadata[key] = value;

    /// <summary>Writes both files.</summary>
    public void Save()
    {
        System.IO.Directory.CreateDirectory(Directory);
        var index = new Dictionary<string, long[]>();
        using (var stream = File.Create(Path.Combine(Directory, "tensors.bin")))
        {
            long offset = 0;
            foreach (var (name, values) in _arrays)
            {
                stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
                index[name] = [offset, values.Length];
                offset += values.Length;
            }
        }
        File.WriteAllText(Path.Combine(Directory, "index.json"), JsonSerializer.Serialize(new { arrays = index, metadata = _metadata }));
    }
}
