namespace KvPacket.Compute.Kv;

/// <summary>
/// One model's KV cache as numbered blocks of <see cref="Layout"/>, handed out with reference counts so that a block (a
/// packet page, say) can be shared read-only by many sequences and is freed when the last one lets go. Where the blocks'
/// memory lives — host (<see cref="KvBlockPool"/>) or a GPU — is the subclass's business; packets and block tables only
/// need the ids and the counts. Allocation and release are O(1) and allocate nothing.
/// </summary>
public abstract class KvBlocks : IDisposable
{
    private readonly int[] _free;
    private readonly int[] _references;
    private int _freeCount;

    /// <summary>Numbers <paramref name="blockCount"/> blocks of <paramref name="layout"/>, all free.</summary>
    protected KvBlocks(KvCacheLayout layout, int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        Layout = layout;
        BlockCount = blockCount;
        _free = new int[blockCount];
        _references = new int[blockCount];
        for (int i = 0; i < blockCount; i++) _free[i] = blockCount - 1 - i;
        _freeCount = blockCount;
    }

    /// <summary>Layout of every block.</summary>
    public KvCacheLayout Layout { get; }

    /// <summary>Blocks in the cache.</summary>
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

    /// <summary>Fills <paramref name="blocks"/> with free blocks of one reference each — all of them, or none when too few are free.</summary>
    /// <exception cref="KvCacheExhaustedException">Fewer than blocks.Length are free.</exception>
    public void Allocate(Span<int> blocks)
    {
        if (blocks.Length > _freeCount) throw new KvCacheExhaustedException(BlockCount);
        for (int i = 0; i < blocks.Length; i++) blocks[i] = Allocate();
    }

    /// <summary>Adds a reference to a block in use (sharing it).</summary>
    public void Retain(int block)
    {
        CheckInUse(block);
        _references[block]++;
    }

    /// <summary>Drops a reference; the block returns to the cache when none remain.</summary>
    public void Release(int block)
    {
        CheckInUse(block);
        if (--_references[block] == 0) _free[_freeCount++] = block;
    }

    /// <summary>References held on <paramref name="block"/>.</summary>
    public int ReferenceCount(int block) => _references[block];

    private void CheckInUse(int block)
    {
        if ((uint)block >= (uint)BlockCount || _references[block] <= 0)
            throw new InvalidOperationException($"KV block {block} is not in use.");
    }

    /// <summary>Frees the blocks' memory.</summary>
    public abstract void Dispose();
}
