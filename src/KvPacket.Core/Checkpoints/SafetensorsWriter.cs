using System.Buffers.Binary;
using System.Text.Json;
using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>Writes <c>.safetensors</c> files (f32, f16, bf16), header padded to 8 bytes as the format recommends.</summary>
public static class SafetensorsWriter
{
    /// <summary>Writes <paramref name="tensors"/> in order to <paramref name="path"/>.</summary>
    public static void Write(string path, IReadOnlyList<TensorToWrite> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (key, value) in metadata ?? new Dictionary<string, string> { ["format"] = "pt" }) json.WriteString(key, value);
            json.WriteEndObject();
            long offset = 0;
            foreach (var tensor in tensors)
            {
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.Type switch
                {
                    DType.F32 => "F32",
                    DType.F16 => "F16",
                    DType.BF16 => "BF16",
                    _ => throw new NotSupportedException($"safetensors cannot hold {tensor.Type} ('{tensor.Name}')."),
                });
                json.WriteStartArray("shape");
                foreach (long d in tensor.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset += tensor.ByteCount);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        while (buffer.Length % 8 != 0) buffer.WriteByte((byte)' ');

        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(length, buffer.Length);
        stream.Write(length);
        buffer.Position = 0;
        buffer.CopyTo(stream);
        foreach (var tensor in tensors) tensor.WriteTo(stream);
    }
}
