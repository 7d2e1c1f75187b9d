using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Store;

/// <summary>One packet to store: its KV, the model and adapter that built it, the document's tokens, and the stored form.</summary>
public sealed record PacketWrite(Packet Packet, ModelFingerprint Model, ReadOnlyMemory<int> Document, AdapterRef Adapter, KvStorage Storage = KvStorage.F16);
