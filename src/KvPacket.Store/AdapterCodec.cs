using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using KvPacket.Engine.Rag;

namespace KvPacket.Store;

/// <summary>
/// The payload of an adapter record: <c>u16 name length, name (UTF-8), i32 version, i32 hidden size, i32 header,
/// i32 trailer, i32 link counts, then the header, trailer and link embeddings as f32 rows</c>.
/// </summary>
internal static class AdapterCodec
{
    public static byte[] Write(Adapter adapter, int hidden)
    {
        byte[] name = Encoding.UTF8.GetBytes(adapter.Id);
        var payload = new byte[2 + name.Length + 20 + 4 * (adapter.Header.Length + adapter.Trailer.Length + adapter.Links.Length)];
        BinaryPrimitives.WriteUInt16LittleEndian(payload, checked((ushort)name.Length));
        name.CopyTo(payload, 2);
        var rest = payload.AsSpan(2 + name.Length);
        BinaryPrimitives.WriteInt32LittleEndian(rest, adapter.Version);
        BinaryPrimitives.WriteInt32LittleEndian(rest[4..], hidden);
        BinaryPrimitives.WriteInt32LittleEndian(rest[8..], adapter.Header.Length / hidden);
        BinaryPrimitives.WriteInt32LittleEndian(rest[12..], adapter.Trailer.Length / hidden);
        BinaryPrimitives.WriteInt32LittleEndian(rest[16..], adapter.Links.Length / hidden);
        var values = MemoryMarshal.Cast<byte, float>(rest[20..]);
        adapter.Header.CopyTo(values);
        adapter.Trailer.CopyTo(values[adapter.Header.Length..]);
        adapter.Links.CopyTo(values[(adapter.Header.Length + adapter.Trailer.Length)..]);
        return payload;
    }

    public static Adapter Read(ReadOnlySpan<byte> payload, long address)
    {
        try
        {
            int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(payload);
            string name = Encoding.UTF8.GetString(payload.Slice(2, nameBytes));
            var rest = payload[(2 + nameBytes)..];
            int version = BinaryPrimitives.ReadInt32LittleEndian(rest);
            int hidden = BinaryPrimitives.ReadInt32LittleEndian(rest[4..]);
            int header = BinaryPrimitives.ReadInt32LittleEndian(rest[8..]) * hidden;
            int trailer = BinaryPrimitives.ReadInt32LittleEndian(rest[12..]) * hidden;
            int links = BinaryPrimitives.ReadInt32LittleEndian(rest[16..]) * hidden;
            var values = MemoryMarshal.Cast<byte, float>(rest[20..]);
            return new Adapter(name, version, values[..header].ToArray(), values.Slice(header, trailer).ToArray(), values.Slice(header + trailer, links).ToArray());
        }
        catch (Exception e) when (e is ArgumentOutOfRangeException or OverflowException)
        {
            throw new CorruptRecordException($"adapter record at log address {address} is malformed.");
        }
    }
}
