using KvPacket.Core.Memory;

namespace KvPacket.Compute.Kv;

/// <summary>KV blocks in one native host allocation (the CPU backend's cache).</summary>
public sealed unsafe class KvBlockPool : KvBlocks
{
    private readonly NativeBuffer<byte> _memory;

    /// <summary>Reserves <paramref name="blockCount"/> blocks of <paramref name="layout"/>.</summary>
    public KvBlockPool(KvCacheLayout layout, int blockCount) : base(layout, blockCount)
        => _memory = new NativeBuffer<byte>(layout.BlockBytes * blockCount);

    /// <summary>Start of layer <paramref name="layer"/>'s K plane in <paramref name="block"/>.</summary>
    public byte* Key(int block, int layer) => _memory.Pointer + block * Layout.BlockBytes + 2 * layer * Layout.PlaneBytes;

    /// <summary>Start of layer <paramref name="layer"/>'s V plane in <paramref name="block"/>.</summary>
    public byte* Value(int block, int layer) => Key(block, layer) + Layout.PlaneBytes;

    /// <summary>The whole block's bytes (all layers), for storing or loading a packet page.</summary>
    public Span<byte> BlockBytes(int block) => _memory.Slice(block * Layout.BlockBytes, checked((int)Layout.BlockBytes));

    /// <inheritdoc />
    public override void Dispose() => _memory.Dispose();
}
