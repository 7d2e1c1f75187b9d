namespace KvPacket.Store;

/// <summary>What a log record holds.</summary>
internal enum RecordKind : byte
{
    /// <summary>One page of a packet: whole KV blocks, in <see cref="KvStorage"/>.</summary>
    Page = 1,
    /// <summary>Completes a packet: its token ids and the addresses of its pages. A packet without one does not exist.</summary>
    Manifest = 2,
    /// <summary>Deletes a packet.</summary>
    Tombstone = 3,
    /// <summary>A version of an adapter's soft-token embeddings.</summary>
    Adapter = 4,
}
