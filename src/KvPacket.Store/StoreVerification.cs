namespace KvPacket.Store;

/// <summary>What <see cref="PacketStore.Verify"/> found.</summary>
/// <param name="Records">Records read from the log.</param>
/// <param name="Packets">Live packets the log holds.</param>
/// <param name="Adapters">Adapter versions the log holds.</param>
/// <param name="Problems">Each damaged record, missing page or index disagreement, in words; empty when the store is sound.</param>
public sealed record StoreVerification(int Records, int Packets, int Adapters, IReadOnlyList<string> Problems)
{
    /// <summary>Whether nothing was found wrong.</summary>
    public bool IsSound => Problems.Count == 0;
}
