using ILGPU;

namespace KvPacket.Compute.Ilgpu;

public static partial class IlgpuKernels
{
    /// <summary>
    /// Packets the store keeps as int8 pages, decoded where they land: slot s of <paramref name="staged"/> (every
    /// <paramref name="slotBytes"/>) holds one <see cref="Kv.Int8KvBlock"/> followed by the id of the cache block it
    /// becomes; value = scale · q in f32, as the host's decode computes it. Index: (value of the block, slot).
    /// </summary>
    public static void DecodeInt8Block(Index2D i, ArrayView<byte> staged, ArrayView<float> pool, int slotBytes, int segments, int segmentLength, int blockFloats)
    {
        long slot = (long)i.Y * slotBytes, levels = slot + 4L * segments;
        int destination = Word(staged, levels + blockFloats);
        float scale = Interop.IntAsFloat((uint)Word(staged, slot + 4L * (i.X / segmentLength)));
        pool[(long)destination * blockFloats + i.X] = scale * (sbyte)staged[levels + i.X];
    }

    /// <summary>The little-endian 32-bit word at byte <paramref name="at"/>.</summary>
    private static int Word(ArrayView<byte> bytes, long at) =>
        bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | bytes[at + 3] << 24;
}
