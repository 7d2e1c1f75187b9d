namespace KvPacket.Core.Checkpoints;

/// <summary>GGML q4_0 blocks: an f16 scale d, then 16 bytes of 4-bit values (value i in byte i mod 16, low nibble first); value = d · (q − 8).</summary>
public static class Q4_0
{
    /// <summary>Values per block.</summary>
    public const int BlockSize = 32;
    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = 2 + BlockSize / 2;

    /// <summary>Expands q4_0 <paramref name="blocks"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination)
    {
        int count = BlockCodec.Count(blocks.Length, destination.Length, BlockSize, BlockBytes, "q4_0");
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * BlockBytes, BlockBytes);
            float d = BlockCodec.Half(block);
            var output = destination.Slice(b * BlockSize, BlockSize);
            for (int i = 0; i < 16; i++)
            {
                output[i] = d * ((block[2 + i] & 0xF) - 8);
                output[i + 16] = d * ((block[2 + i] >> 4) - 8);
            }
        }
    }

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 32) into q4_0 <paramref name="destination"/>.</summary>
    /// <remarks>The value of largest magnitude maps to q = 0 (−8 steps), so its sign's side gets the extra level.</remarks>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = BlockCodec.Count(destination.Length, values.Length, BlockSize, BlockBytes, "q4_0");
        for (int b = 0; b < count; b++)
        {
            var input = values.Slice(b * BlockSize, BlockSize);
            float extreme = BlockCodec.SignedAbsMax(input);
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            float d = BlockCodec.WriteHalf(block, extreme / -8);
            float inverse = d == 0 ? 0 : 1 / d;
            for (int i = 0; i < 16; i++)
            {
                int lo = BlockCodec.Level(input[i] * inverse + 8, 15), hi = BlockCodec.Level(input[i + 16] * inverse + 8, 15);
                block[2 + i] = (byte)(lo | hi << 4);
            }
        }
    }
}
