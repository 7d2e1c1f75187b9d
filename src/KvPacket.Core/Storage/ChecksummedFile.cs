using System.Buffers.Binary;
using System.IO.Hashing;

namespace KvPacket.Core.Storage;

/// <summary>
/// A small state file (an index snapshot, a training checkpoint) that is replaced whole: the body followed by an
/// xxHash3 of it, written to a temporary file, flushed to disk and renamed over the old one, so a crash leaves the
/// old file or the new one and a damaged file is recognised, never half-read.
/// </summary>
public static class ChecksummedFile
{
    /// <summary>Replaces <paramref name="path"/> with <paramref name="body"/> and its checksum.</summary>
    public static void Write(string path, ReadOnlySpan<byte> body)
    {
        Span<byte> checksum = stackalloc byte[sizeof(ulong)];
        BinaryPrimitives.WriteUInt64LittleEndian(checksum, XxHash3.HashToUInt64(body));
        string temporary = path + ".tmp";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            file.Write(body);
            file.Write(checksum);
            file.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The body of <paramref name="path"/>, or null when its checksum does not match (the file is damaged).</summary>
    public static byte[]? TryRead(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < sizeof(ulong)) return null;
        var body = bytes.AsSpan(0, bytes.Length - sizeof(ulong));
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(body.Length)) == XxHash3.HashToUInt64(body) ? body.ToArray() : null;
    }
}
