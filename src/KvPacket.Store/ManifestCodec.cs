using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace KvPacket.Store;

/// <summary>
/// The payload of a manifest record: <c>u16 adapter-name length, adapter name (UTF-8), i32 document tokens,
/// i32 token ids[], i32 page count, then (i64 address, i32 record length) per page</c>.
/// </summary>
internal static class ManifestCodec
{
    public static int Size(string adapterName, int tokens, int pages) =>
        2 + Encoding.UTF8.GetByteCount(adapterName) + 4 + tokens * 4 + 4 + pages * 12;

    public static void Write(Span<byte> destination, string adapterName, ReadOnlySpan<int> tokens, ReadOnlySpan<RecordRef> pages)
    {
        int nameBytes = Encoding.UTF8.GetBytes(adapterName, destination[2..]);
        BinaryPrimitives.WriteUInt16LittleEndian(destination, checked((ushort)nameBytes));
        var rest = destination[(2 + nameBytes)..];
        BinaryPrimitives.WriteInt32LittleEndian(rest, tokens.Length);
        MemoryMarshal.AsBytes(tokens).CopyTo(rest[4..]);
        rest = rest[(4 + tokens.Length * 4)..];
        BinaryPrimitives.WriteInt32LittleEndian(rest, pages.Length);
        for (int i = 0; i < pages.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(rest[(4 + i * 12)..], pages[i].Address);
            BinaryPrimitives.WriteInt32LittleEndian(rest[(12 + i * 12)..], pages[i].Length);
        }
    }

    /// <summary>A whole manifest record (header and payload) for packet <paramref name="info"/> of <paramref name="tokens"/> with <paramref name="pages"/>.</summary>
    public static byte[] Record(PacketInfo info, ReadOnlySpan<int> tokens, ReadOnlySpan<RecordRef> pages)
    {
        int payloadLength = Size(info.Adapter.Name, tokens.Length, pages.Length);
        byte[] record = new byte[RecordHeader.Size + payloadLength];
        var payload = record.AsSpan(RecordHeader.Size);
        Write(payload, info.Adapter.Name, tokens, pages);
        new RecordHeader(RecordKind.Manifest, info.Storage, info.Model, info.Adapter.Hash, info.Adapter.Version, pages.Length, info.Id, info.KvTokens,
            payloadLength, PayloadChecksum.Of(payload, int.MaxValue), info.BlockSize, 0, info.PositionSpan).Write(record);
        return record;
    }

    /// <summary>Parses a manifest payload (whose checksum has been checked), or throws <see cref="CorruptRecordException"/>.</summary>
    public static (string AdapterName, int[] Tokens, RecordRef[] Pages) Read(ReadOnlySpan<byte> payload, long address)
    {
        try
        {
            int nameBytes = BinaryPrimitives.ReadUInt16LittleEndian(payload);
            string name = Encoding.UTF8.GetString(payload.Slice(2, nameBytes));
            var rest = payload[(2 + nameBytes)..];
            int tokenCount = BinaryPrimitives.ReadInt32LittleEndian(rest);
            int[] tokens = MemoryMarshal.Cast<byte, int>(rest.Slice(4, checked(tokenCount * 4))).ToArray();
            rest = rest[(4 + tokenCount * 4)..];
            int pageCount = BinaryPrimitives.ReadInt32LittleEndian(rest);
            if (pageCount < 0 || pageCount > (rest.Length - 4) / 12) throw new CorruptRecordException($"manifest at log address {address} counts {pageCount} pages; its payload holds at most {Math.Max(0, (rest.Length - 4) / 12)}.");
            var pages = new RecordRef[pageCount];
            for (int i = 0; i < pageCount; i++)
                pages[i] = new RecordRef(BinaryPrimitives.ReadInt64LittleEndian(rest[(4 + i * 12)..]), BinaryPrimitives.ReadInt32LittleEndian(rest[(12 + i * 12)..]));
            return (name, tokens, pages);
        }
        catch (Exception e) when (e is ArgumentOutOfRangeException or OverflowException)
        {
            throw new CorruptRecordException($"manifest at log address {address} is malformed.");
        }
    }
}
