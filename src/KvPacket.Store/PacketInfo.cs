using KvPacket.Core.Model;

namespace KvPacket.Store;

/// <summary>What the store knows about one packet, without reading its KV.</summary>
/// <param name="Id">The packet's id.</param>
/// <param name="Model">Fingerprint of the model that built it.</param>
/// <param name="Adapter">The adapter it was built with.</param>
/// <param name="Storage">How its KV is stored.</param>
/// <param name="DocumentTokens">The document's token count.</param>
/// <param name="KvTokens">KV rows in the packet (the document plus any header/trailer soft tokens, less pruned tokens).</param>
/// <param name="PositionSpan">Positions the packet spans when placed (more than <paramref name="KvTokens"/> when token-pruned).</param>
/// <param name="BlockSize">Tokens per KV block it was stored with.</param>
/// <param name="StoredBytes">Bytes its records take in the log, headers included.</param>
public readonly record struct PacketInfo(
    PacketId Id, ModelFingerprint Model, AdapterRef Adapter, KvStorage Storage, int DocumentTokens, int KvTokens, int PositionSpan, int BlockSize, long StoredBytes)
{
    /// <summary>What a checked manifest record says, with <paramref name="storedBytes"/> taken by its records.</summary>
    internal static PacketInfo FromManifest(RecordHeader manifest, string adapterName, int documentTokens, long storedBytes) =>
        new(manifest.Packet, manifest.Model, new AdapterRef(adapterName, manifest.AdapterVersion), manifest.Storage, documentTokens,
            manifest.TokenCount, Math.Max(manifest.PositionSpan, manifest.TokenCount), manifest.BlockSize, storedBytes);
}

/// <summary>Counts over the whole store.</summary>
/// <param name="Packets">Live packets.</param>
/// <param name="Adapters">Stored adapter versions.</param>
/// <param name="LiveBytes">Bytes of live records (packets' pages and manifests, adapters).</param>
/// <param name="LogBytes">Bytes between the log's begin and tail: live plus dead (deleted, superseded or torn) records.</param>
public readonly record struct StoreStats(int Packets, int Adapters, long LiveBytes, long LogBytes)
{
    /// <summary>Bytes that compaction would reclaim.</summary>
    public long DeadBytes => Math.Max(0, LogBytes - LiveBytes);

    /// <summary>Live bytes over log bytes (1 when empty).</summary>
    public double LiveRatio => LogBytes == 0 ? 1 : (double)LiveBytes / LogBytes;
}
