using System.Buffers.Binary;
using System.Globalization;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using KvPacket.Core.Model;

namespace KvPacket.Store;

/// <summary>
/// A packet's identity: a 128-bit hash of the model fingerprint, the adapter it was built with and the document's
/// token ids. The same document under another model or adapter is another packet, by construction.
/// </summary>
public readonly record struct PacketId(UInt128 Value)
{
    /// <summary>The id of <paramref name="tokens"/> encoded by <paramref name="model"/> with <paramref name="adapter"/>,
    /// token-pruned to the fraction <paramref name="keep"/> when below 1.</summary>
    public static PacketId For(ModelFingerprint model, AdapterRef adapter, ReadOnlySpan<int> tokens, double keep = 1.0)
    {
        var hash = new XxHash128();
        Span<byte> prefix = stackalloc byte[28];
        BinaryPrimitives.WriteUInt128LittleEndian(prefix, model.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(prefix[16..], adapter.Hash);
        BinaryPrimitives.WriteInt32LittleEndian(prefix[24..], adapter.Version);
        hash.Append(prefix);
        hash.Append(MemoryMarshal.AsBytes(tokens));
        if (keep < 1)
        {
            Span<byte> fraction = stackalloc byte[8];
            BinaryPrimitives.WriteDoubleLittleEndian(fraction, keep);
            hash.Append(fraction);
        }
        return new PacketId(hash.GetCurrentHashAsUInt128());
    }

    /// <summary>Parses the 32 hex digits <see cref="ToString"/> writes.</summary>
    /// <exception cref="FormatException">Not 32 hex digits.</exception>
    public static PacketId Parse(string text) =>
        TryParse(text, out var id) ? id : throw new FormatException($"'{text}' is not a packet id (32 hex digits).");

    /// <summary>Parses the 32 hex digits <see cref="ToString"/> writes.</summary>
    public static bool TryParse(string? text, out PacketId id)
    {
        id = default;
        if (text is not { Length: 32 } || !UInt128.TryParse(text, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var value)) return false;
        id = new PacketId(value);
        return true;
    }

    /// <summary>32 lowercase hex digits.</summary>
    public override string ToString() => Value.ToString("x32", CultureInfo.InvariantCulture);
}
