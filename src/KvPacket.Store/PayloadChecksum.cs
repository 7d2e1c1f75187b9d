using System.IO.Hashing;

namespace KvPacket.Store;

/// <summary>
/// The checksum of a payload made of chunks (a page's stored KV blocks, or one chunk for other records): xxHash3 of
/// the chunks' own xxHash3 values in order. Hashing chunk by chunk lets a load check blocks in the place it read them
/// to, without first gathering the page into one buffer.
/// </summary>
internal struct PayloadChecksum
{
    private ulong _state;

    /// <summary>Folds the next chunk in.</summary>
    public void Append(ReadOnlySpan<byte> chunk) => AppendHash(XxHash3.HashToUInt64(chunk));

    /// <summary>Folds in the next chunk by its xxHash3 (computed elsewhere, in parallel say).</summary>
    public void AppendHash(ulong chunkHash)
    {
        Span<ulong> pair = [_state, chunkHash];
        _state = XxHash3.HashToUInt64(System.Runtime.InteropServices.MemoryMarshal.AsBytes(pair));
    }

    /// <summary>The checksum of the chunks appended so far.</summary>
    public readonly ulong Value => _state;

    /// <summary>The checksum of a payload split into chunks of <paramref name="chunkBytes"/> (the last may be short).</summary>
    public static ulong Of(ReadOnlySpan<byte> payload, int chunkBytes)
    {
        var checksum = new PayloadChecksum();
        do
        {
            int length = Math.Min(chunkBytes, payload.Length);
            checksum.Append(payload[..length]);
            payload = payload[length..];
        } while (!payload.IsEmpty);
        return checksum.Value;
    }
}
