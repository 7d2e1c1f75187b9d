using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Store;

/// <summary>
/// One packet to store: its KV, the model and adapter that built it, the document's tokens, the stored form, and the
/// fraction of the document's tokens it keeps (below 1 for a token-pruned packet: part of its id).
/// </summary>
public sealed record PacketWrite(Packet Packet, ModelFingerprint Model, ReadOnlyMemory<int> Document, AdapterRef Adapter,
    KvStorage Storage = KvStorage.F16, double Keep = 1.0);
