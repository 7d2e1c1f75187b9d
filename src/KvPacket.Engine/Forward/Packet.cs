using KvPacket.Compute.Kv;

namespace KvPacket.Engine.Forward;

/// <summary>
/// The immutable KV cache of one document computed alone from position 0: a list of blocks in the model's KV cache
/// (host memory for the CPU backend, device memory for the GPU one), shared read-only by every sequence that places it (each holds a reference). Disposing drops the packet's own
/// reference; blocks return to the pool when the last sequence using them lets go.
/// </summary>
public sealed class Packet : IDisposable
{
    private bool _disposed;

    /// <summary>
    /// A packet of <paramref name="length"/> tokens in <paramref name="blocks"/> of <paramref name="pool"/>; it takes over
    /// one reference on each block. A pruned packet keeps fewer tokens than the <paramref name="positionSpan"/> positions
    /// its document covered (their keys keep their original rotations).
    /// </summary>
    public Packet(KvBlocks pool, IReadOnlyList<int> blocks, int length, int? positionSpan = null)
    {
        if (positionSpan < length) throw new ArgumentOutOfRangeException(nameof(positionSpan), $"A packet of {length} tokens cannot span {positionSpan} positions.");
        Pool = pool;
        Blocks = blocks;
        Length = length;
        PositionSpan = positionSpan ?? length;
    }

    /// <summary>The KV cache the blocks live in (one model's, on one backend).</summary>
    public KvBlocks Pool { get; }

    /// <summary>Block ids in position order; every block but the last is full.</summary>
    public IReadOnlyList<int> Blocks { get; }

    /// <summary>Tokens (KV rows) in the packet.</summary>
    public int Length { get; }

    /// <summary>Positions the packet occupies when placed: its length, or more for a token-pruned packet.</summary>
    public int PositionSpan { get; }

    /// <summary>Whether token pruning dropped some of the document's tokens.</summary>
    public bool IsPruned => PositionSpan != Length;

    /// <summary>Another reference to the same blocks (each retained once more), to be disposed on its own.</summary>
    public Packet Share()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (int block in Blocks) Pool.Retain(block);
        return new Packet(Pool, Blocks, Length, PositionSpan);
    }

    /// <summary>
    /// A copy of this packet in fresh blocks of <paramref name="target"/> (another backend's cache, or a host pool to
    /// store it from), the bytes moved one block at a time by <paramref name="copyBlock"/>(this block, the target's block).
    /// On failure the target's blocks are given back.
    /// </summary>
    /// <exception cref="ArgumentException">The target's KV layout is not this packet's.</exception>
    public Packet CopyTo(KvBlocks target, Action<int, int> copyBlock)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (target.Layout != Pool.Layout) throw new ArgumentException($"The packet's KV layout ({Pool.Layout}) is not the target cache's ({target.Layout}).", nameof(target));
        var blocks = new int[Blocks.Count];
        target.Allocate(blocks);
        try
        {
            for (int b = 0; b < blocks.Length; b++) copyBlock(Blocks[b], blocks[b]);
        }
        catch
        {
            foreach (int block in blocks) target.Release(block);
            throw;
        }
        return new Packet(target, blocks, Length, PositionSpan);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (int block in Blocks) Pool.Release(block);
    }
}
