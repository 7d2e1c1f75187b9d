using System.Text;
using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>Writes GGUF v3 files: metadata (strings, integers, floats, and arrays of strings, floats or integers) and f32/f16/bf16 tensors and the GGML block formats of <see cref="DType"/>.</summary>
public static class GgufWriter
{
    /// <summary>Writes <paramref name="metadata"/> and <paramref name="tensors"/> to <paramref name="path"/>.</summary>
    /// <remarks>Metadata values may be string, uint, int, float, ulong, double or bool, or an array of string, float or int.</remarks>
    public static void Write(string path, IReadOnlyList<KeyValuePair<string, object>> metadata, IReadOnlyList<TensorToWrite> tensors)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        void WriteString(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            writer.Write((ulong)bytes.Length);
            writer.Write(bytes);
        }

        void WriteArrayHeader(GgufFormat.ValueType element, int count)
        {
            writer.Write((uint)GgufFormat.ValueType.Array);
            writer.Write((uint)element);
            writer.Write((ulong)count);
        }

        writer.Write(GgufFormat.Magic);
        writer.Write(GgufFormat.Version);
        writer.Write((ulong)tensors.Count);
        writer.Write((ulong)metadata.Count);
        foreach (var (key, value) in metadata)
        {
            WriteString(key);
            switch (value)
            {
                case string s: writer.Write((uint)GgufFormat.ValueType.String); WriteString(s); break;
                case uint u: writer.Write((uint)GgufFormat.ValueType.UInt32); writer.Write(u); break;
                case int i: writer.Write((uint)GgufFormat.ValueType.Int32); writer.Write(i); break;
                case float f: writer.Write((uint)GgufFormat.ValueType.Float32); writer.Write(f); break;
                case ulong ul: writer.Write((uint)GgufFormat.ValueType.UInt64); writer.Write(ul); break;
                case double d: writer.Write((uint)GgufFormat.ValueType.Float64); writer.Write(d); break;
                case bool b: writer.Write((uint)GgufFormat.ValueType.Bool); writer.Write(b); break;
                case string[] strings:
                    WriteArrayHeader(GgufFormat.ValueType.String, strings.Length);
                    foreach (string item in strings) WriteString(item);
                    break;
                case float[] floats:
                    WriteArrayHeader(GgufFormat.ValueType.Float32, floats.Length);
                    foreach (float item in floats) writer.Write(item);
                    break;
                case int[] ints:
                    WriteArrayHeader(GgufFormat.ValueType.Int32, ints.Length);
                    foreach (int item in ints) writer.Write(item);
                    break;
                default: throw new NotSupportedException($"GGUF metadata '{key}' has unsupported type {value.GetType().Name}.");
            }
        }

        long offset = 0;
        foreach (var tensor in tensors)
        {
            WriteString(tensor.Name);
            writer.Write((uint)tensor.Shape.Length);
            for (int d = tensor.Shape.Length - 1; d >= 0; d--) writer.Write((ulong)tensor.Shape[d]); // ne[0] is innermost
            writer.Write((uint)GgufFormat.TensorTypeOf(tensor.Type));
            writer.Write((ulong)offset);
            offset = Align(offset + tensor.ByteCount);
        }
        writer.Flush();
        Pad(stream);
        foreach (var tensor in tensors)
        {
            tensor.WriteTo(stream);
            Pad(stream);
        }
    }

    private static long Align(long offset) => (offset + GgufFormat.DefaultAlignment - 1) / GgufFormat.DefaultAlignment * GgufFormat.DefaultAlignment;

    private static void Pad(Stream stream)
    {
        while (stream.Position % GgufFormat.DefaultAlignment != 0) stream.WriteByte(0);
    }
}
