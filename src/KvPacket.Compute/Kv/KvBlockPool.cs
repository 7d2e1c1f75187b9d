using KvPacket.Core.Memory;

namespace KvPacket.Compute.Kv;

/// <summary>
/// A fixed arena of KV blocks in one native allocation, handed out by id with reference counts so that a block
/// (a packet page, say) can be shared read-only by many sequences and is freed when the last one lets go.
/// Allocation and release are O(1) and allocate nothing.
/// </summary>
public sealed unsafe class KvBlockPool : IDisposable
{
    private readonly NativeBuffer<byte> _memory;
    private readonly int[] _free;
    private readonly int[] _references;
    private int _freeCount;

    /// <summary>Reserves <paramref name="blockCount"/> blocks of <paramref name="layout"/>.</summary>
    public KvBlockPool(KvCacheLayout layout, int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        Layout = layout;
        BlockCount = blockCount;
        _memory = new NativeBuffer<byte>(layout.BlockBytes * blockCount);
        _free = new int[blockCount];
        _references = new int[blockCount];
        for (int i = 0; i < blockCount; i++) _free[i] = blockCount - 1 - i;
        _freeCount = blockCount;
    }

    /// <summary>Layout of every block.</summary>
    public KvCacheLayout Layout { get; }

    /// <summary>Blocks in the pool.</summary>
    public int BlockCount { get; }

    /// <summary>Blocks not in use.</summary>
    public int FreeBlockCount => _freeCount;

    /// <summary>Takes a free block with one reference.</summary>
    /// <exception cref="KvCacheExhaustedException">No block is free.</exception>
    public int Allocate()
    {
        if (_freeCount == 0) throw new KvCacheExhaustedException(BlockCount);
        int block = _free[--_freeCount];
        _references[block] = 1;
        return block;
    }

    /// <summary>Adds a reference to a block in use (sharing it).</summary>
    public void Retain(int block)
    {
        CheckInUse(block);
        _references[block]++;
    }

    /// <summary>Drops a reference; the block returns to the pool when none remain.</summary>
    public void Release(int block)
    {
        CheckInUse(block);
        if (--_references[block] == 0) _free[_freeCount++] = block;
    }

    /// <summary>References held on <paramref name="block"/>.</summary>
    public int ReferenceCount(int block) => _references[block];

    /// <summary>Start of layer <paramref name="layer"/>'s K plane in <paramref name="block"/>.</summary>
    public byte* Key(int block, int layer) => _memory.Pointer + block * Layout.BlockBytes + 2 * layer * Layout.PlaneBytes;

    /// <summary>Start of layer <paramref name="layer"/>'s V plane in <paramref name="block"/>.</summary>
    public byte* Value(int block, int layer) => Key(block, layer) + Layout.PlaneBytes;

    /// <summary>The whole block's bytes (all layers), for storing or loading a packet page.</summary>
    public Span<byte> BlockBytes(int block) => _memory.Slice(block * Layout.BlockBytes, checked((int)Layout.BlockBytes));

    private void CheckInUse(int block)
    {
        if ((uint)block >= (uint)BlockCount || _references[block] <= 0)
            throw new InvalidOperationException($"KV block {block} is not in use.");
    }

    /// <inheritdoc />
    public void Dispose() => _memory.Dispose();
}
