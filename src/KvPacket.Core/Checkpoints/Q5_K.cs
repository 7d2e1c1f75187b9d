namespace KvPacket.Core.Checkpoints;

/// <summary>
/// GGML q5_K super-blocks of 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (<see cref="KQuantScales"/>),
/// 32 bytes of fifth bits (bit j of byte l belongs to sub-block j's value l), 128 bytes of low nibbles laid out as in
/// <see cref="Q4_K"/>; value = d·scale·q − dmin·min with q in 0..31.
/// </summary>
public static class Q5_K
{
    /// <summary>Values per block.</summary>
    public const int BlockSize = KQuantScales.SuperBlockSize;
    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = 4 + KQuantScales.Bytes + 32 + BlockSize / 2;
    /// <summary>Offset of the fifth bits in a block.</summary>
    public const int HighBitsOffset = 4 + KQuantScales.Bytes;
    /// <summary>Offset of the low nibbles in a block.</summary>
    public const int LevelsOffset = HighBitsOffset + 32;

    /// <summary>Expands q5_K <paramref name="blocks"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination) =>
        KQuantScales.Dequantise(blocks, destination, BlockBytes, LevelsOffset, HighBitsOffset, "q5_K");

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 256) into q5_K <paramref name="destination"/>.</summary>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = BlockCodec.Count(destination.Length, values.Length, BlockSize, BlockBytes, "q5_K");
        Span<byte> levels = stackalloc byte[BlockSize];
        for (int b = 0; b < count; b++)
        {
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            KQuantScales.Quantise(values.Slice(b * BlockSize, BlockSize), 31, block, block.Slice(4, KQuantScales.Bytes), levels);
            var high = block.Slice(HighBitsOffset, 32);
            high.Clear();
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++)
                {
                    int lo = levels[64 * c + l], hi = levels[64 * c + 32 + l];
                    block[LevelsOffset + c * 32 + l] = (byte)((lo & 0xF) | (hi & 0xF) << 4);
                    high[l] |= (byte)((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
                }
        }
    }
}
