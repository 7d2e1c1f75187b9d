using System.Runtime.InteropServices;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>
/// Builds each (document, adapter) packet once with the model and keeps it in memory for the source's lifetime;
/// token-pruned to the fraction <paramref name="keep"/> of each document's tokens when below 1.
/// </summary>
public sealed class BuiltPackets(IForwardBackend model, double keep = 1.0) : IPacketSource
{
    private readonly Dictionary<(string Adapter, int Version, string Document), Packet> _packets = new();

    /// <inheritdoc />
    public Packet Acquire(ReadOnlySpan<int> document, Adapter? adapter)
    {
        var key = (adapter?.Id ?? "", adapter?.Version ?? 0, Convert.ToBase64String(MemoryMarshal.AsBytes(document)));
        if (!_packets.TryGetValue(key, out var packet))
            _packets[key] = packet = model.BuildPacket(document, adapter?.Header ?? default, adapter?.Trailer ?? default, keep);
        return packet.Share();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var packet in _packets.Values) packet.Dispose();
        _packets.Clear();
    }
}
