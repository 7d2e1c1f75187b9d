using System.Runtime.InteropServices;
using KvPacket.Compute.Kv;

namespace KvPacket.Engine.Forward;

/// <summary>
/// One entry of a device backend's block table, as its attention kernels read it (five ints): positions
/// [<see cref="FirstPosition"/>, + <see cref="Count"/>) live in slots [<see cref="FirstSlot"/>, …) of <see cref="Block"/>,
/// their keys rotated at position − <see cref="Rotation"/> (a placed packet's local positions), so a query is realigned
/// by <see cref="Rotation"/> instead of rewriting keys.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal record struct BlockEntry(int Block, int FirstPosition, int Count, int Rotation, int FirstSlot);

/// <summary>
/// One sequence of a device backend (CUDA, ILGPU): its block table in position order and its length. New tokens go into
/// the last entry's block while the sequence owns it (<see cref="TailOwned"/>) and it has room; a placed packet's
/// entries are shared, reference-counted blocks. The backends keep the K/V bytes; this keeps the bookkeeping, once.
/// </summary>
internal sealed class BlockTable
{
    /// <summary>Tokens in the sequence.</summary>
    public int Length;

    /// <summary>Whether the last entry's block is this sequence's own, so the next computed token may go into it.</summary>
    public bool TailOwned;

    /// <summary>The entries, in position order.</summary>
    public readonly List<BlockEntry> Entries = [];

    /// <summary>Per entry: whether the sequence computed its block itself (false for placed and shared blocks).</summary>
    public readonly List<bool> Owned = [];

    /// <summary>Appends <paramref name="entry"/>.</summary>
    public void Add(BlockEntry entry, bool owned)
    {
        Entries.Add(entry);
        Owned.Add(owned);
    }

    /// <summary>The block and slot for the computed token at <paramref name="position"/> (the next one), taking a fresh block of <paramref name="blocks"/> when needed.</summary>
    public (int Block, int Slot) Claim(int position, KvBlocks blocks)
    {
        if (!TailOwned || position - Entries[^1].FirstPosition == blocks.Layout.BlockSize)
        {
            Add(new BlockEntry(blocks.Allocate(), position, 0, 0, 0), owned: true);
            TailOwned = true;
        }
        var tail = Entries[^1];
        int slot = position - tail.FirstPosition;
        Entries[^1] = tail with { Count = slot + 1 };
        return (tail.Block, slot);
    }

    /// <summary>
    /// Places <paramref name="packet"/>'s tokens [<paramref name="skip"/>, …) at the end as shared blocks realigned by the
    /// placement's offset, or with keys left at <paramref name="keyOrigin"/> ≥ 0 (<see cref="IForwardBackend.AppendPacket"/>),
    /// within <paramref name="maxLength"/>.
    /// </summary>
    public void Place(Packet packet, int skip, KvBlocks blocks, int maxLength, int keyOrigin = -1)
    {
        if (!ReferenceEquals(packet.Pool, blocks)) throw new ArgumentException("The packet lives in another model's KV cache (or on another backend).", nameof(packet));
        if ((uint)skip > (uint)packet.Length) throw new ArgumentOutOfRangeException(nameof(skip), $"Cannot skip {skip} of a {packet.Length}-token packet.");
        if (skip > 0 && packet.IsPruned) throw new ArgumentException("A token-pruned packet cannot be placed in part (EPIC recomputes a prefix of the whole document).", nameof(skip));
        int placed = packet.PositionSpan - skip, blockSize = blocks.Layout.BlockSize;
        if (Length + placed > maxLength)
            throw new ArgumentOutOfRangeException(nameof(packet), $"Placing a {placed}-token packet at offset {Length} exceeds the context of {maxLength}.");
        int placement = Length - skip;   // global position − the packet's local position
        int rotation = keyOrigin >= 0 ? keyOrigin : placement;   // where its keys stand − where they were rotated
        for (int local = skip; local < packet.Length;)
        {
            int slot = local % blockSize, count = Math.Min(blockSize - slot, packet.Length - local);
            int block = packet.Blocks[local / blockSize];
            blocks.Retain(block);
            Add(new BlockEntry(block, local + placement, count, rotation, slot), owned: false);
            local += count;
        }
        Length += placed;
        TailOwned = false;
    }

    /// <summary>Takes <paramref name="source"/>'s entries up to <paramref name="upTo"/> as shared blocks (<see cref="IForwardBackend.SharePrefix"/>).</summary>
    public int ShareFrom(BlockTable source, int upTo, KvBlocks blocks)
    {
        if (Entries.Count != 0) throw new InvalidOperationException("Only an empty sequence can take another's prefix.");
        int shared = 0;
        while (shared < source.Entries.Count && source.Entries[shared] is var e && e.FirstPosition + e.Count <= upTo) shared++;
        if (shared == source.Entries.Count || !source.Owned[shared]) return 0;
        for (int i = 0; i < shared; i++)
        {
            blocks.Retain(source.Entries[i].Block);
            Add(source.Entries[i], owned: false);
        }
        TailOwned = false;
        return Length = source.Entries[shared].FirstPosition;
    }

    /// <summary>Fresh blocks that appending <paramref name="tokens"/> computed tokens would take.</summary>
    public int BlocksNeededFor(int tokens, int blockSize)
    {
        int room = TailOwned ? blockSize - (Length - Entries[^1].FirstPosition) : 0;
        return tokens <= room ? 0 : (tokens - room + blockSize - 1) / blockSize;
    }

    /// <summary>The table's blocks, in order (a sequence computed alone from position 0 becoming a packet).</summary>
    public int[] Blocks() => [.. Entries.Select(e => e.Block)];

    /// <summary>Lets go of every block.</summary>
    public void Release(KvBlocks blocks)
    {
        foreach (var entry in Entries) blocks.Release(entry.Block);
        Entries.Clear();
        Owned.Clear();
        Length = 0;
    }
}

/// <summary>A device backend's sequences by handle.</summary>
internal sealed class BlockTables
{
    private readonly List<BlockTable?> _tables = [];

    /// <summary>A new empty sequence's handle.</summary>
    public int Create()
    {
        int id = _tables.IndexOf(null);
        if (id < 0) { id = _tables.Count; _tables.Add(null); }
        _tables[id] = new BlockTable();
        return id;
    }

    /// <summary>Sequence <paramref name="id"/>.</summary>
    public BlockTable this[int id] =>
        (uint)id < (uint)_tables.Count && _tables[id] is { } table ? table : throw new ArgumentException($"No sequence {id}.", nameof(id));

    /// <summary>
    /// <see cref="IForwardBackend.BuildPacket"/> for a device backend whose sequences these are: <paramref name="tokens"/>
    /// computed alone between the optional soft tokens in a new sequence, whose blocks (their one reference each) then
    /// become the packet's.
    /// </summary>
    public Packet BuildPacket(IForwardBackend backend, ReadOnlySpan<int> tokens, ReadOnlySpan<float> header, ReadOnlySpan<float> trailer)
    {
        if (tokens.IsEmpty) throw new ArgumentException("A packet needs at least one token.", nameof(tokens));
        int id = backend.CreateSequence();
        try
        {
            if (!header.IsEmpty) backend.PrefillSoft(id, header, default);
            backend.Prefill(id, tokens, default);
            if (!trailer.IsEmpty) backend.PrefillSoft(id, trailer, default);
        }
        catch
        {
            backend.ReleaseSequence(id);
            throw;
        }
        var table = this[id];
        var packet = new Packet(backend.KvBlocks, table.Blocks(), table.Length);
        Remove(id);
        return packet;
    }

    /// <summary>Forgets sequence <paramref name="id"/> (its blocks are the caller's business).</summary>
    public void Remove(int id)
    {
        _ = this[id];
        _tables[id] = null;
    }
}
