using KvPacket.Core.Memory;

namespace KvPacket.Compute.Kv;

/// <summary>
/// KV blocks in one native host allocation: the CPU backend's cache, or a device backend's staging for packets on their
/// way between the store and the device (then page-locked, so the device's copies are DMA from it).
/// </summary>
public sealed unsafe class KvBlockPool : KvBlocks
{
    private byte* _pointer;
    private readonly Action<nint> _free;

    /// <summary>Reserves <paramref name="blockCount"/> blocks of <paramref name="layout"/>.</summary>
    public KvBlockPool(KvCacheLayout layout, int blockCount) : base(layout, blockCount)
    {
        var memory = new NativeBuffer<byte>(layout.BlockBytes * blockCount);
        _pointer = memory.Pointer;
        _free = _ => memory.Dispose();
    }

    /// <summary>
    /// <paramref name="blockCount"/> blocks of <paramref name="layout"/> in <paramref name="memory"/> (at least that many
    /// blocks' bytes, allocated by the caller: page-locked host memory, say), handed to <paramref name="free"/> on dispose.
    /// </summary>
    public KvBlockPool(KvCacheLayout layout, int blockCount, nint memory, Action<nint> free, bool pageLocked) : base(layout, blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfZero(memory);
        _pointer = (byte*)memory;
        _free = free;
        IsPageLocked = pageLocked;
    }

    /// <summary>Whether the memory is page-locked (a device may copy from it asynchronously, by DMA).</summary>
    public bool IsPageLocked { get; }

    private byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(KvBlockPool));

    /// <summary>Start of layer <paramref name="layer"/>'s K plane in <paramref name="block"/>.</summary>
    public byte* Key(int block, int layer) => Pointer + block * Layout.BlockBytes + 2 * layer * Layout.PlaneBytes;

    /// <summary>Start of layer <paramref name="layer"/>'s V plane in <paramref name="block"/>.</summary>
    public byte* Value(int block, int layer) => Key(block, layer) + Layout.PlaneBytes;

    /// <summary>The whole block's bytes (all layers), for storing or loading a packet page.</summary>
    public Span<byte> BlockBytes(int block)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)block, (uint)BlockCount, nameof(block));
        return new Span<byte>(Pointer + block * Layout.BlockBytes, checked((int)Layout.BlockBytes));
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        if (_pointer == null) return;
        _free((nint)_pointer);
        _pointer = null;
    }
}
