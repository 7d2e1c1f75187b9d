using System.Buffers.Binary;
using System.IO.Hashing;
using KvPacket.Core.Model;

namespace KvPacket.Store;

/// <summary>
/// The fixed 96-byte header in front of every record's payload. Little-endian layout:
/// <code>
///  0 u32 magic "KVPR"      4 u16 format version   6 u8 kind   7 u8 KV storage
///  8 u128 model fingerprint                        24 u64 adapter name hash
/// 32 i32 adapter version  36 i32 page index (or page count in a manifest)
/// 40 u128 packet id (adapter records: hash of name and version)
/// 56 i32 token count      60 i32 payload length    64 u64 payload checksum
/// 72 i32 block size       76 i32 first token of the page    80 i32 position span (manifests)   84 u32 reserved
/// 88 u64 xxHash3 of bytes 0..88
/// </code>
/// The header checksum tells a torn or overwritten header from a valid one before any field is trusted; the payload
/// checksum (see <see cref="PayloadChecksum"/>) does the same for the data.
/// </summary>
internal readonly record struct RecordHeader(
    RecordKind Kind,
    KvStorage Storage,
    ModelFingerprint Model,
    ulong AdapterHash,
    int AdapterVersion,
    int PageIndex,
    PacketId Packet,
    int TokenCount,
    int PayloadLength,
    ulong PayloadChecksum,
    int BlockSize,
    int FirstToken,
    int PositionSpan = 0)
{
    /// <summary>Bytes of a header.</summary>
    public const int Size = 96;

    /// <summary>"KVPR" read as a little-endian u32.</summary>
    public const uint Magic = 0x5250564B;

    /// <summary>The record format this build writes and reads.</summary>
    public const ushort FormatVersion = 1;

    /// <summary>Writes the header, checksum included, into the first <see cref="Size"/> bytes of <paramref name="destination"/>.</summary>
    public void Write(Span<byte> destination)
    {
        destination = destination[..Size];
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[4..], FormatVersion);
        destination[6] = (byte)Kind;
        destination[7] = (byte)Storage;
        BinaryPrimitives.WriteUInt128LittleEndian(destination[8..], Model.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], AdapterHash);
        BinaryPrimitives.WriteInt32LittleEndian(destination[32..], AdapterVersion);
        BinaryPrimitives.WriteInt32LittleEndian(destination[36..], PageIndex);
        BinaryPrimitives.WriteUInt128LittleEndian(destination[40..], Packet.Value);
        BinaryPrimitives.WriteInt32LittleEndian(destination[56..], TokenCount);
        BinaryPrimitives.WriteInt32LittleEndian(destination[60..], PayloadLength);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[64..], PayloadChecksum);
        BinaryPrimitives.WriteInt32LittleEndian(destination[72..], BlockSize);
        BinaryPrimitives.WriteInt32LittleEndian(destination[76..], FirstToken);
        BinaryPrimitives.WriteInt32LittleEndian(destination[80..], PositionSpan);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[84..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[88..], XxHash3.HashToUInt64(destination[..88]));
    }

    /// <summary>Reads a header, or says in <paramref name="error"/> why the bytes are not one.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out RecordHeader header, out string? error)
    {
        header = default;
        if (source.Length < Size) { error = $"record of {source.Length} bytes is shorter than its {Size}-byte header"; return false; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(source) != Magic) { error = "bad record magic"; return false; }
        if (BinaryPrimitives.ReadUInt64LittleEndian(source[88..]) != XxHash3.HashToUInt64(source[..88])) { error = "record header checksum mismatch"; return false; }
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(source[4..]);
        if (version != FormatVersion) { error = $"record format version {version}, this build reads {FormatVersion}"; return false; }
        header = new RecordHeader(
            (RecordKind)source[6],
            (KvStorage)source[7],
            new ModelFingerprint(BinaryPrimitives.ReadUInt128LittleEndian(source[8..])),
            BinaryPrimitives.ReadUInt64LittleEndian(source[24..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[32..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[36..]),
            new PacketId(BinaryPrimitives.ReadUInt128LittleEndian(source[40..])),
            BinaryPrimitives.ReadInt32LittleEndian(source[56..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[60..]),
            BinaryPrimitives.ReadUInt64LittleEndian(source[64..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[72..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[76..]),
            BinaryPrimitives.ReadInt32LittleEndian(source[80..]));
        if (!Enum.IsDefined(header.Kind)) { error = $"unknown record kind {(byte)header.Kind}"; return false; }
        if (header.PayloadLength < 0) { error = $"negative payload length {header.PayloadLength}"; return false; }
        error = null;
        return true;
    }

    /// <summary>
    /// Reads the header of page <paramref name="page"/> of packet <paramref name="info"/> and checks it is that page, of
    /// that model, holding <paramref name="payloadLength"/> bytes; returns its payload checksum. The page was read from
    /// log address <paramref name="address"/>, or from the shared tier's <paramref name="key"/> when that is given.
    /// </summary>
    /// <exception cref="CorruptRecordException">The bytes are not that page's header.</exception>
    public static ulong ReadPage(ReadOnlySpan<byte> bytes, PacketInfo info, int page, int payloadLength, long address, string? key = null)
    {
        if (TryRead(bytes, out var h, out string? error) && h.Kind == RecordKind.Page && h.Packet == info.Id && h.PageIndex == page
            && h.PayloadLength == payloadLength && h.Storage == info.Storage && h.Model == info.Model)
            return h.PayloadChecksum;
        string where = key is null ? $"at log address {address}" : $"under key {key}";
        throw new CorruptRecordException(error is not null ? $"packet {info.Id} page {page} {where}: {error}."
            : $"packet {info.Id} page {page} {where}: the record there is {h.Kind} {h.PageIndex} of packet {h.Packet}, model {h.Model}.");
    }
}
