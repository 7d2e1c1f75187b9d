namespace KvPacket.Store;

/// <summary>A record's place in the log: its address and its length (our header plus payload).</summary>
internal readonly record struct RecordRef(long Address, int Length);

/// <summary>The index's entry for one live packet: what it is, where its manifest and pages are.</summary>
internal sealed record StoredPacket(PacketInfo Info, RecordRef Manifest, RecordRef[] Pages);

/// <summary>The index's entry for one stored adapter version.</summary>
internal sealed record StoredAdapter(AdapterRef Adapter, KvPacket.Core.Model.ModelFingerprint Model, RecordRef Record);
