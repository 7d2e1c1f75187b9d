using Microsoft.Extensions.Logging;

namespace KvPacket.Store;

/// <summary>Checks one log record and replays it into an index: the rules recovery, refresh and verify share.</summary>
internal static class LogRecord
{
    /// <summary>Receives each record a scan reads: its address and bytes (our header and payload).</summary>
    public delegate void Visitor(long address, ReadOnlySpan<byte> entry);

    /// <summary>Null when <paramref name="entry"/> is a whole, undamaged record; otherwise what is wrong with it.</summary>
    public static string? Check(ReadOnlySpan<byte> entry, long address, out RecordHeader header, bool checkPayload = true)
    {
        if (!RecordHeader.TryRead(entry, out header, out string? error)) return error;
        var payload = entry[RecordHeader.Size..];
        if (payload.Length != header.PayloadLength) return $"payload is {payload.Length} bytes, its header says {header.PayloadLength}";
        if (!checkPayload && header.Kind == RecordKind.Page) return null;
        int chunk = int.MaxValue;
        if (header.Kind == RecordKind.Page)
        {
            int blocks = header.BlockSize > 0 ? (header.TokenCount + header.BlockSize - 1) / header.BlockSize : 0;
            if (blocks < 1 || payload.Length % blocks != 0) return $"page of {header.TokenCount} tokens cannot hold a {payload.Length}-byte payload";
            chunk = payload.Length / blocks;
        }
        if (payload.Length > 0 && PayloadChecksum.Of(payload, chunk) != header.PayloadChecksum) return "payload checksum mismatch";
        return null;
    }

    /// <summary>Applies a checked manifest, tombstone or adapter record to <paramref name="index"/>; a malformed one is reported and skipped.</summary>
    public static void Replay(PacketIndex index, RecordHeader header, ReadOnlySpan<byte> entry, long address, ILogger logger, List<string>? problems)
    {
        try
        {
            var payload = entry[RecordHeader.Size..];
            switch (header.Kind)
            {
                case RecordKind.Manifest:
                    var (adapterName, tokens, pages) = ManifestCodec.Read(payload, address);
                    long bytes = entry.Length + pages.Sum(p => (long)p.Length);
                    var info = PacketInfo.FromManifest(header, adapterName, tokens.Length, bytes);
                    index.Packets[header.Packet] = new StoredPacket(info, new RecordRef(address, entry.Length), pages);
                    break;
                case RecordKind.Tombstone:
                    index.Packets.Remove(header.Packet);
                    break;
                case RecordKind.Adapter:
                    var adapter = AdapterCodec.Read(payload, address);
                    var reference = new AdapterRef(adapter.Id, adapter.Version);
                    index.Adapters[(adapter.Id, adapter.Version)] = new StoredAdapter(reference, header.Model, new RecordRef(address, entry.Length));
                    break;
            }
        }
        catch (CorruptRecordException e)
        {
            logger.LogError("{Error} Skipped.", e.Message);
            problems?.Add(e.Message);
        }
    }
}
