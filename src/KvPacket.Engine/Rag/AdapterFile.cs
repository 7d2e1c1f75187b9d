using System.Globalization;
using System.Runtime.InteropServices;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Engine.Rag;

/// <summary>
/// An adapter as a file that ships beside its model: <c>.safetensors</c> with f32 tensors <c>header</c>, <c>trailer</c>
/// and <c>links</c> (each [count, hidden]; absent when empty) and metadata naming the adapter, its version and the
/// fingerprint of the model it was trained for — so a file is never applied to another model.
/// </summary>
public static class AdapterFile
{
    private static readonly string[] Parts = ["header", "trailer", "links"];

    /// <summary>Writes <paramref name="adapter"/>, trained for <paramref name="model"/> (width <paramref name="hidden"/>), to <paramref name="path"/>.</summary>
    public static void Write(string path, Adapter adapter, ModelFingerprint model, int hidden)
    {
        float[][] values = [adapter.Header, adapter.Trailer, adapter.Links];
        var tensors = new List<TensorToWrite>();
        for (int i = 0; i < Parts.Length; i++)
        {
            float[] rows = values[i];
            if (rows.Length == 0) continue;
            if (rows.Length % hidden != 0) throw new ArgumentException($"adapter '{adapter.Id}': {Parts[i]} has {rows.Length} values, not whole rows of {hidden}");
            tensors.Add(new TensorToWrite(Parts[i], DType.F32, [rows.Length / hidden, hidden], stream => stream.Write(MemoryMarshal.AsBytes(rows.AsSpan()))));
        }
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string>
        {
            ["format"] = "kvpacket-adapter",
            ["name"] = adapter.Id,
            ["version"] = adapter.Version.ToString(CultureInfo.InvariantCulture),
            ["model"] = model.ToString(),
        });
    }

    /// <summary>Reads the adapter at <paramref name="path"/>; it must have been trained for <paramref name="model"/>.</summary>
    public static Adapter Read(string path, ModelFingerprint model, int hidden)
    {
        using var file = SafetensorsFile.Open(path);
        string Meta(string key) => file.Metadata.TryGetValue(key, out string? value) ? value : throw new InvalidDataException($"{path}: not a kvpacket adapter (no '{key}' in its metadata)");
        if (Meta("format") != "kvpacket-adapter") throw new InvalidDataException($"{path}: format '{Meta("format")}' is not kvpacket-adapter");
        if (Meta("model") != model.ToString())
            throw new InvalidDataException($"{path}: adapter '{Meta("name")}' was trained for model {Meta("model")}, not this model ({model})");
        if (!int.TryParse(Meta("version"), CultureInfo.InvariantCulture, out int version)) throw new InvalidDataException($"{path}: version '{Meta("version")}' is not a number");
        foreach (string name in file.Tensors.Keys)
            if (!Parts.Contains(name)) throw new InvalidDataException($"{path}: unexpected tensor '{name}' (an adapter holds header, trailer and links)");
        var values = new float[Parts.Length][];
        for (int i = 0; i < Parts.Length; i++)
        {
            if (!file.Tensors.TryGetValue(Parts[i], out var tensor)) { values[i] = []; continue; }
            if (tensor.Type != DType.F32 || tensor.Columns != hidden)
                throw new InvalidDataException($"{path}: {Parts[i]} is {tensor.Type}[{tensor.Rows}, {tensor.Columns}], expected F32 rows of the model's width {hidden}");
            values[i] = new float[tensor.ElementCount];
            tensor.ReadRows(0, tensor.Rows, values[i]);
        }
        return new Adapter(Meta("name"), version, values[0], values[1], values[2]);
    }

    /// <summary>
    /// One adapter from several files — a KV Packet one (header/trailer) and a KVLink one (links) — so both modes run
    /// with one engine; two files that both give soft tokens, or both links, are refused.
    /// </summary>
    public static Adapter ReadCombined(IReadOnlyList<string> paths, ModelFingerprint model, int hidden)
    {
        if (paths.Count == 0) throw new ArgumentException("no adapter file given");
        var combined = Read(paths[0], model, hidden);
        foreach (string path in paths.Skip(1))
        {
            var next = Read(path, model, hidden);
            bool soft = next.Header.Length + next.Trailer.Length > 0;
            if ((soft && combined.Header.Length + combined.Trailer.Length > 0) || (next.Links.Length > 0 && combined.Links.Length > 0))
                throw new ArgumentException($"{path} gives soft tokens an earlier adapter file already gave (combine one KV Packet and one KVLink adapter)");
            combined = soft ? next with { Links = combined.Links } : combined with { Links = next.Links };
        }
        return combined;
    }
}
