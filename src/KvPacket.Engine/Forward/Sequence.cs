using KvPacket.Compute.Cpu;
using KvPacket.Compute.Kv;

namespace KvPacket.Engine.Forward;

/// <summary>
/// One sequence's state in the KV cache: its block table (entries covering positions 0..Length−1 in order) and how
/// many tokens it holds. Tokens computed for this sequence go into blocks it owns; packets appended with
/// <see cref="AppendPacket"/> contribute shared, read-only blocks placed at the sequence's current length.
/// The table is sized for the whole context up front, so growing it does not allocate. Disposing releases every block.
/// </summary>
public sealed unsafe class Sequence : IDisposable
{
    private readonly KvBlockPool _pool;
    private KvBlockEntry[] _entries;

    internal Sequence(KvBlockPool pool, int maxContext)
    {
        _pool = pool;
        MaxLength = maxContext;
        _entries = new KvBlockEntry[(maxContext + pool.Layout.BlockSize - 1) / pool.Layout.BlockSize + 8];
    }

    /// <summary>Tokens whose K and V are in the cache.</summary>
    public int Length { get; internal set; }

    /// <summary>The longest this sequence may grow (the model's context).</summary>
    public int MaxLength { get; }

    /// <summary>The block table; only the first <see cref="EntryCount"/> entries are valid.</summary>
    public KvBlockEntry[] Entries => _entries;

    /// <summary>Valid entries of <see cref="Entries"/>.</summary>
    public int EntryCount { get; private set; }

    /// <summary>
    /// Places <paramref name="packet"/>'s tokens [<paramref name="skip"/>, packet.Length) at positions [Length, …): shared
    /// blocks, never written, with queries realigned by the placement's offset at attention time. Skipping lets the caller
    /// recompute the packet's first tokens in context (EPIC) and place only the rest. A pruned packet still advances the
    /// sequence by its whole position span; the positions of dropped tokens hold nothing and receive no attention.
    /// <paramref name="keyOrigin"/> ≥ 0: the keys stay where they were computed, counted from that position
    /// (<see cref="IForwardBackend.AppendPacket"/>); the placement still orders them for causality.
    /// </summary>
    public void AppendPacket(Packet packet, int skip = 0, int keyOrigin = -1)
    {
        if (!ReferenceEquals(packet.Pool, _pool)) throw new ArgumentException("The packet lives in another model's KV cache.", nameof(packet));
        if ((uint)skip > (uint)packet.Length) throw new ArgumentOutOfRangeException(nameof(skip), $"Cannot skip {skip} of a {packet.Length}-token packet.");
        if (skip > 0 && packet.IsPruned) throw new ArgumentException("A token-pruned packet cannot be placed in part (EPIC recomputes a prefix of the whole document).", nameof(skip));
        int placed = packet.PositionSpan - skip;
        if (Length + placed > MaxLength)
            throw new ArgumentOutOfRangeException(nameof(packet), $"Placing a {placed}-token packet at offset {Length} exceeds the model's context of {MaxLength}.");
        int blockSize = _pool.Layout.BlockSize;
        int placement = Length - skip;   // global position − the packet's local position
        int rotationOffset = keyOrigin >= 0 ? keyOrigin : placement;   // where its keys stand − where they were rotated
        for (int local = skip; local < packet.Length;)
        {
            int b = local / blockSize, slot = local % blockSize;
            int count = Math.Min(blockSize - slot, packet.Length - local);
            _pool.Retain(packet.Blocks[b]);
            Add(new KvBlockEntry(packet.Blocks[b], local + placement, count, rotationOffset, ReadOnly: true, FirstSlot: slot));
            local += count;
        }
        Length += placed;
    }

    /// <summary>
    /// Places a private copy of <paramref name="packet"/> at positions [Length, …) with its keys re-rotated to their global
    /// positions, so the copy can be partly recomputed in place (CacheBlend) without touching the shared packet.
    /// </summary>
    internal void AppendPacketCopy(Packet packet, RotaryEmbedding rope)
    {
        if (!ReferenceEquals(packet.Pool, _pool)) throw new ArgumentException("The packet lives in another model's KV cache.", nameof(packet));
        if (packet.IsPruned) throw new ArgumentException("CacheBlend recomputes a document's tokens in place and needs every one of them: this packet is token-pruned.", nameof(packet));
        if (Length + packet.Length > MaxLength)
            throw new ArgumentOutOfRangeException(nameof(packet), $"Placing a {packet.Length}-token packet at offset {Length} exceeds the model's context of {MaxLength}.");
        var layout = _pool.Layout;
        var cos = new float[rope.PairCount];
        var sin = new float[rope.PairCount];
        rope.Angles(Length, cos, sin);
        var key = new float[layout.HeadDim];
        var copies = new int[packet.Blocks.Count];
        for (int b = 0; b < copies.Length; b++)
        {
            copies[b] = _pool.Allocate();
            _pool.BlockBytes(packet.Blocks[b]).CopyTo(_pool.BlockBytes(copies[b]));
            for (int layer = 0; layer < layout.LayerCount; layer++)
                for (int g = 0; g < layout.KvHeadCount; g++)
                    for (int slot = 0; slot < layout.BlockSize; slot++)
                        RotateKey(_pool.Key(copies[b], layer), layout.Offset(g, slot), key, rope, cos, sin);
        }
        int blockSize = layout.BlockSize;
        for (int b = 0; b < copies.Length; b++)
            Add(new KvBlockEntry(copies[b], Length + b * blockSize, Math.Min(blockSize, packet.Length - b * blockSize), 0, ReadOnly: false));
        Length += packet.Length;
    }

    private void RotateKey(byte* plane, long offset, float[] key, RotaryEmbedding rope, float[] cos, float[] sin)
    {
        int d = key.Length;
        if (_pool.Layout.Type == Core.Memory.DType.F16)
        {
            var stored = new Span<Half>((Half*)plane + offset, d);
            Core.Memory.ElementConversion.HalfToSingle(stored, key);
            rope.Rotate(key, 1, cos, sin);
            Core.Memory.ElementConversion.SingleToHalf(key, stored);
        }
        else rope.Rotate(new Span<float>((float*)plane + offset, d), 1, cos, sin);
    }

    /// <summary>
    /// Takes <paramref name="source"/>'s KV for its first positions, up to (not past) <paramref name="upTo"/>, as shared
    /// read-only entries — the blocks are reference-counted, nothing is copied — and returns where this sequence's own
    /// tokens start. For choices of one prompt: a sibling computes only the tail its leader's whole entries do not cover.
    /// Shares nothing (returns 0) unless what follows the shared entries is computed tokens.
    /// </summary>
    internal int SharePrefix(Sequence source, int upTo)
    {
        if (!ReferenceEquals(source._pool, _pool)) throw new ArgumentException("The sequence lives in another model's KV cache.", nameof(source));
        if (EntryCount != 0) throw new InvalidOperationException("Only an empty sequence can take another's prefix.");
        int shared = 0;
        while (shared < source.EntryCount && source._entries[shared] is var e && e.FirstPosition + e.Count <= upTo) shared++;
        if (shared == source.EntryCount || source._entries[shared].ReadOnly) return 0;
        for (int i = 0; i < shared; i++)
        {
            _pool.Retain(source._entries[i].Block);
            Add(source._entries[i] with { ReadOnly = true });
        }
        return Length = source._entries[shared].FirstPosition;
    }

    /// <summary>The block and slot already holding <paramref name="position"/>, which must be in a block this sequence owns.</summary>
    internal (int Block, int Slot) Locate(int position)
    {
        for (int i = EntryCount - 1; i >= 0; i--)
        {
            var e = _entries[i];
            if (position < e.FirstPosition || position >= e.FirstPosition + e.Count) continue;
            if (e.ReadOnly || e.RotationOffset != 0) throw new InvalidOperationException($"Position {position} lies in a shared packet block and cannot be recomputed in place.");
            return (e.Block, e.FirstSlot + position - e.FirstPosition);
        }
        throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} is not in this sequence (length {Length}).");
    }

    /// <summary>
    /// Appends blocks this sequence will own, already holding positions [Length, Length + <paramref name="length"/>) with
    /// keys rotated at their global positions. For tests that check realignment against re-rotated key copies.
    /// </summary>
    internal void AppendOwnedBlocks(IReadOnlyList<int> blocks, int length)
    {
        int blockSize = _pool.Layout.BlockSize;
        for (int b = 0; b < blocks.Count; b++)
            Add(new KvBlockEntry(blocks[b], Length + b * blockSize, Math.Min(blockSize, length - b * blockSize), 0, ReadOnly: true));
        Length += length;
    }

    /// <summary>Fresh blocks that appending <paramref name="count"/> computed tokens would take (what <see cref="SlotFor"/> will allocate).</summary>
    public int BlocksNeededFor(int count)
    {
        int blockSize = _pool.Layout.BlockSize;
        int room = SlotInLastBlock(Length) is int slot ? blockSize - slot : 0;
        return count <= room ? 0 : (count - room + blockSize - 1) / blockSize;
    }

    /// <summary>The slot of <paramref name="position"/> in the last block when that block is this sequence's own and has room for it; null otherwise.</summary>
    private int? SlotInLastBlock(int position)
    {
        if (EntryCount == 0) return null;
        var last = _entries[EntryCount - 1];
        int slot = position - last.FirstPosition;
        return !last.ReadOnly && last.FirstSlot == 0 && slot < _pool.Layout.BlockSize ? slot : null;
    }

    /// <summary>The block and slot that will hold position <paramref name="position"/> (≥ Length), taking fresh blocks as needed.</summary>
    internal (int Block, int Slot) SlotFor(int position)
    {
        if (position >= MaxLength)
            throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} exceeds the model's context of {MaxLength}.");
        if (SlotInLastBlock(position) is int slot)
        {
            var last = _entries[EntryCount - 1];
            if (slot >= last.Count) _entries[EntryCount - 1] = last with { Count = slot + 1 };
            return (last.Block, slot);
        }
        int block = _pool.Allocate();
        Add(new KvBlockEntry(block, position, 1, 0, ReadOnly: false));
        return (block, 0);
    }

    /// <summary>
    /// Hands this sequence's blocks to a packet and empties the sequence. Only a sequence computed alone from
    /// position 0 (no packets of its own) can become a packet.
    /// </summary>
    internal int[] DetachBlocks()
    {
        var blocks = new int[EntryCount];
        for (int i = 0; i < EntryCount; i++)
        {
            if (_entries[i].ReadOnly) throw new InvalidOperationException("A sequence that contains packets cannot itself become a packet.");
            blocks[i] = _entries[i].Block;
        }
        EntryCount = 0;
        Length = 0;
        return blocks;
    }

    private void Add(KvBlockEntry entry)
    {
        if (EntryCount == _entries.Length) Array.Resize(ref _entries, _entries.Length * 2); // only when many short packets are placed
        _entries[EntryCount++] = entry;
    }

    /// <summary>Releases every block and empties the sequence.</summary>
    public void Dispose()
    {
        for (int i = 0; i < EntryCount; i++) _pool.Release(_entries[i].Block);
        EntryCount = 0;
        Length = 0;
    }
}
