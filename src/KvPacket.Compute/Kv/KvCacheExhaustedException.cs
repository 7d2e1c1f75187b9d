namespace KvPacket.Compute.Kv;

/// <summary>Every block of a KV cache (<see cref="KvBlocks"/>) is in use.</summary>
public sealed class KvCacheExhaustedException(int blockCount)
    : Exception($"The KV cache is full: all {blockCount} blocks are in use. Free sequences or start with a larger cache.");
