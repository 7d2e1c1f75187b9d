using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>Where a <see cref="RagEngine"/> gets documents' packets: built on the spot, kept in memory, or loaded from a store.</summary>
public interface IPacketSource : IDisposable
{
    /// <summary>
    /// The packet of <paramref name="document"/> encoded alone, between <paramref name="adapter"/>'s header and trailer
    /// soft tokens (the plain document when null). The caller owns the returned reference and disposes it.
    /// </summary>
    Packet Acquire(ReadOnlySpan<int> document, Adapter? adapter);

    /// <summary>
    /// A hint that <paramref name="document"/>'s packet will be acquired soon (a waiting request's): a source may start
    /// reading it while the caller computes. Returns whether a read is under way for it (an acquire now would wait for
    /// it). By default nothing happens.
    /// </summary>
    bool Prefetch(ReadOnlySpan<int> document, Adapter? adapter) => false;
}
