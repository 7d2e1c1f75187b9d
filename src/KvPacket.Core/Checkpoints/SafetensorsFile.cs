using System.Buffers.Binary;
using System.Text.Json;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// One <c>.safetensors</c> file loaded into memory (<see cref="FileBytes.Load(string)"/>): an 8-byte little-endian header length, a JSON header
/// (name → dtype, shape, data_offsets relative to the data section), then the tensor bytes.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly FileBytes _file;

    private SafetensorsFile(FileBytes file, Dictionary<string, WeightTensor> tensors, Dictionary<string, string> metadata)
    {
        _file = file;
        Tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>The file's tensors; 1-D tensors have one row.</summary>
    public IReadOnlyDictionary<string, WeightTensor> Tensors { get; }

    /// <summary>The header's <c>__metadata__</c> strings.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Loads and validates <paramref name="path"/>.</summary>
    public static SafetensorsFile Open(string path)
    {
        var file = FileBytes.Load(path);
        try
        {
            if (file.Length < 8) throw new CheckpointFormatException(path, "header length", $"file has only {file.Length} bytes");
            long headerLength = BinaryPrimitives.ReadInt64LittleEndian(file.Bytes(0, 8));
            if (headerLength <= 0 || headerLength > 100_000_000 || 8 + headerLength > file.Length)
                throw new CheckpointFormatException(path, "header length", $"{headerLength} does not fit in a file of {file.Length} bytes");
            long dataStart = 8 + headerLength;
            long dataLength = file.Length - dataStart;

            using var json = ParseHeader(path, file.Bytes(8, (int)headerLength));
            if (json.RootElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException(path, "header", "is not a JSON object");
            var tensors = new Dictionary<string, WeightTensor>();
            var metadata = new Dictionary<string, string>();
            try
            {
                foreach (var entry in json.RootElement.EnumerateObject())
                {
                    if (entry.Name == "__metadata__")
                    {
                        if (entry.Value.ValueKind != JsonValueKind.Object) throw new CheckpointFormatException(path, "__metadata__", $"is a {entry.Value.ValueKind}, not an object");
                        foreach (var m in entry.Value.EnumerateObject()) metadata[m.Name] = m.Value.ToString();
                        continue;
                    }
                    tensors[entry.Name] = ReadEntry(path, entry, file.Pointer + dataStart, dataLength);
                }
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json's answer to a name or string that is not valid UTF-8.
                throw new CheckpointFormatException(path, "header", $"holds text that is not valid UTF-8 ({e.Message})", e);
            }
            return new SafetensorsFile(file, tensors, metadata);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static JsonDocument ParseHeader(string path, ReadOnlySpan<byte> header)
    {
        try
        {
            var reader = new Utf8JsonReader(header.TrimEnd((byte)' '));
            return JsonDocument.ParseValue(ref reader);
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(path, "header", $"is not valid JSON ({e.Message})", e);
        }
    }

    private static WeightTensor ReadEntry(string path, JsonProperty entry, byte* data, long dataLength)
    {
        string name = entry.Name;
        if (entry.Value.ValueKind != JsonValueKind.Object
            || !entry.Value.TryGetProperty("dtype", out var dtypeElement)
            || !entry.Value.TryGetProperty("shape", out var shapeElement)
            || !entry.Value.TryGetProperty("data_offsets", out var offsetsElement))
            throw new CheckpointFormatException(path, name, "entry needs dtype, shape and data_offsets");

        DType type = dtypeElement.GetString() switch
        {
            "F32" => DType.F32,
            "F16" => DType.F16,
            "BF16" => DType.BF16,
            var other => throw new CheckpointFormatException(path, name, $"dtype {other} is not supported (F32, F16, BF16)"),
        };
        // Every number is checked for kind and range before it sizes or addresses anything.
        long[] Numbers(JsonElement array, string what, long most) =>
            array.ValueKind == JsonValueKind.Array
                ? [.. array.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) && v >= 0 && v <= most
                    ? v
                    : throw new CheckpointFormatException(path, name, $"{what} {e.GetRawText()} is not an integer in [0, {most}]"))]
                : throw new CheckpointFormatException(path, name, $"{what} {array.GetRawText()} is not an array");
        var shape = Numbers(shapeElement, "shape entry", int.MaxValue);
        (int rows, int columns) = shape.Length switch
        {
            1 => (1, (int)shape[0]),
            2 => ((int)shape[0], (int)shape[1]),
            _ => throw new CheckpointFormatException(path, name, $"has {shape.Length} dimensions; only vectors and matrices are weights"),
        };
        var offsets = Numbers(offsetsElement, "data offset", long.MaxValue);
        if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength)
            throw new CheckpointFormatException(path, name, $"data_offsets [{string.Join(", ", offsets)}] fall outside the {dataLength}-byte data section (truncated file?)");
        long expected = type.BytesFor((long)rows * columns);
        if (offsets[1] - offsets[0] != expected)
            throw new CheckpointFormatException(path, name, $"holds {offsets[1] - offsets[0]} bytes, but {type}[{rows}, {columns}] needs {expected}");
        if (type == DType.F16) FiniteHalves.Require(path, name, data + offsets[0], (long)rows * columns);
        return new WeightTensor(name, type, rows, columns, data + offsets[0]);
    }

    /// <inheritdoc />
    public void Dispose() => _file.Dispose();
}
