namespace KvPacket.Core.Checkpoints;

/// <summary>
/// GGML q4_K super-blocks of 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (<see cref="KQuantScales"/>),
/// 128 bytes of 4-bit levels. Byte l of 32-byte group c holds sub-block 2c's value l (low nibble) and sub-block 2c+1's
/// (high nibble); value = d·scale·q − dmin·min.
/// </summary>
public static class Q4_K
{
    /// <summary>Values per block.</summary>
    public const int BlockSize = KQuantScales.SuperBlockSize;
    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = 4 + KQuantScales.Bytes + BlockSize / 2;
    /// <summary>Offset of the levels in a block.</summary>
    public const int LevelsOffset = 4 + KQuantScales.Bytes;

    /// <summary>Expands q4_K <paramref name="blocks"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination) =>
        KQuantScales.Dequantise(blocks, destination, BlockBytes, LevelsOffset, fifthBits: -1, "q4_K");

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 256) into q4_K <paramref name="destination"/>.</summary>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = BlockCodec.Count(destination.Length, values.Length, BlockSize, BlockBytes, "q4_K");
        Span<byte> levels = stackalloc byte[BlockSize];
        for (int b = 0; b < count; b++)
        {
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            KQuantScales.Quantise(values.Slice(b * BlockSize, BlockSize), 15, block, block.Slice(4, KQuantScales.Bytes), levels);
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++)
                    block[LevelsOffset + c * 32 + l] = (byte)(levels[64 * c + l] | levels[64 * c + 32 + l] << 4);
        }
    }
}
