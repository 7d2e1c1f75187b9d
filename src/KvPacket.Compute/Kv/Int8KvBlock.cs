using System.Runtime.InteropServices;

namespace KvPacket.Compute.Kv;

/// <summary>
/// A KV block in int8 — the packet store's compressed pages, decoded on the host or on a GPU: the block's segments, one per (layer, K/V, KV head) in the
/// <see cref="KvCacheLayout"/>'s order with <see cref="KvCacheLayout.BlockSize"/> × head-dim values each, as one f32 scale
/// per segment (its largest magnitude / 127) followed by every segment's values rounded to int8; value = scale · q.
/// </summary>
public static class Int8KvBlock
{
    /// <summary>Segments in a block: layers × {K, V} × KV heads.</summary>
    public static int SegmentCount(KvCacheLayout layout) => layout.LayerCount * 2 * layout.KvHeadCount;

    /// <summary>Values in one segment: block size × head dim.</summary>
    public static int SegmentLength(KvCacheLayout layout) => layout.BlockSize * layout.HeadDim;

    /// <summary>Bytes of one int8 block of <paramref name="layout"/>: the scales, then the values.</summary>
    public static int Bytes(KvCacheLayout layout) => checked(SegmentCount(layout) * (4 + SegmentLength(layout)));

    /// <summary>Bytes of a staged block, what a device's decode kernel reads: the int8 block, then its destination's id.</summary>
    public static int StagedBytes(KvCacheLayout layout) => Bytes(layout) + sizeof(int);

    /// <summary>
    /// Stages the int8 block at the start of the host block <paramref name="block"/> for a device decode: writes
    /// <paramref name="destination"/> (the cache block it becomes) after it and returns the <see cref="StagedBytes"/> to copy.
    /// </summary>
    public static ReadOnlySpan<byte> Stage(Span<byte> block, KvCacheLayout layout, int destination)
    {
        int bytes = Bytes(layout);
        if (block.Length < bytes + sizeof(int))
            throw new ArgumentException($"An int8 block of {bytes} bytes and its destination do not fit a {block.Length}-byte staging block.", nameof(block));
        MemoryMarshal.Write(block[bytes..], destination);
        return block[..(bytes + sizeof(int))];
    }
}
