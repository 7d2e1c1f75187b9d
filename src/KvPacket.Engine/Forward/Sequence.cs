using KvPacket.Compute.Kv;

namespace KvPacket.Engine.Forward;

/// <summary>
/// One sequence's state in the KV cache: its block table (position p lives in block p / BlockSize) and how many
/// tokens it holds. The table array is sized for the model's whole context up front, so growing never allocates.
/// Disposing returns the blocks to the pool.
/// </summary>
public sealed class Sequence : IDisposable
{
    private readonly KvBlockPool _pool;
    private int _blockCount;

    internal Sequence(KvBlockPool pool, int maxContext)
    {
        _pool = pool;
        MaxLength = maxContext;
        Blocks = new int[(maxContext + pool.Layout.BlockSize - 1) / pool.Layout.BlockSize];
    }

    /// <summary>Tokens whose K and V are in the cache.</summary>
    public int Length { get; internal set; }

    /// <summary>The longest this sequence may grow (the model's context).</summary>
    public int MaxLength { get; }

    /// <summary>Block ids in position order; only the first <see cref="BlockCount"/> are valid.</summary>
    public int[] Blocks { get; }

    /// <summary>Blocks held.</summary>
    public int BlockCount => _blockCount;

    /// <summary>Makes sure blocks exist for positions [0, <paramref name="length"/>).</summary>
    internal void Reserve(int length)
    {
        if (length > MaxLength)
            throw new ArgumentOutOfRangeException(nameof(length), $"A sequence of {length} tokens exceeds the model's context of {MaxLength}.");
        int needed = (length + _pool.Layout.BlockSize - 1) / _pool.Layout.BlockSize;
        while (_blockCount < needed) Blocks[_blockCount++] = _pool.Allocate();
    }

    /// <summary>Releases every block and empties the sequence.</summary>
    public void Dispose()
    {
        for (int i = 0; i < _blockCount; i++) _pool.Release(Blocks[i]);
        _blockCount = 0;
        Length = 0;
    }
}
