namespace KvPacket.Core.Checkpoints;

/// <summary>
/// GGML q6_K super-blocks of 256 values: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one
/// per 16 consecutive values), f16 d; value = d·scale·(q − 32) with q in 0..63. Value e = 128h + 32g + l (half h,
/// group g, lane l) takes its low nibble from byte 64h + 32(g mod 2) + l (low nibble for g &lt; 2, high otherwise) and
/// its high bits from bits 2g..2g+1 of byte 128 + 32h + l.
/// </summary>
public static class Q6_K
{
    /// <summary>Values per block.</summary>
    public const int BlockSize = 256;
    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = BlockSize / 2 + BlockSize / 4 + BlockSize / 16 + 2;
    /// <summary>Offset of the high bits in a block.</summary>
    public const int HighBitsOffset = BlockSize / 2;
    /// <summary>Offset of the int8 scales in a block.</summary>
    public const int ScalesOffset = HighBitsOffset + BlockSize / 4;
    /// <summary>Offset of the f16 d in a block.</summary>
    public const int DOffset = ScalesOffset + BlockSize / 16;

    /// <summary>Level (0..63) of value <paramref name="e"/> of <paramref name="block"/>.</summary>
    public static int Level(ReadOnlySpan<byte> block, int e)
    {
        int h = e / 128, g = e % 128 / 32, l = e % 32;
        int low = block[64 * h + 32 * (g % 2) + l];
        return (g < 2 ? low & 0xF : low >> 4) | ((block[HighBitsOffset + 32 * h + l] >> (2 * g)) & 3) << 4;
    }

    /// <summary>Expands q6_K <paramref name="blocks"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination)
    {
        int count = BlockCodec.Count(blocks.Length, destination.Length, BlockSize, BlockBytes, "q6_K");
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * BlockBytes, BlockBytes);
            float d = BlockCodec.Half(block[DOffset..]);
            var output = destination.Slice(b * BlockSize, BlockSize);
            for (int e = 0; e < BlockSize; e++) output[e] = d * (sbyte)block[ScalesOffset + e / 16] * (Level(block, e) - 32);
        }
    }

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 256) into q6_K <paramref name="destination"/>.</summary>
    /// <remarks>Each 16 values' largest magnitude maps to level 0 (−32 steps); the 16 steps are quantised to int8 against d.</remarks>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = BlockCodec.Count(destination.Length, values.Length, BlockSize, BlockBytes, "q6_K");
        Span<float> step = stackalloc float[16];
        for (int b = 0; b < count; b++)
        {
            var input = values.Slice(b * BlockSize, BlockSize);
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            block[..DOffset].Clear();
            float largest = 0;
            for (int s = 0; s < 16; s++)
            {
                step[s] = BlockCodec.SignedAbsMax(input.Slice(16 * s, 16)) / -32;
                largest = MathF.Max(largest, MathF.Abs(step[s]));
            }
            float d = BlockCodec.WriteHalf(block[DOffset..], largest / 127);
            for (int s = 0; s < 16; s++)
            {
                int scale = d == 0 ? 0 : Math.Clamp((int)MathF.Round(step[s] / d), -127, 127);
                block[ScalesOffset + s] = (byte)(sbyte)scale;
                float inverse = scale == 0 ? 0 : 1 / (d * scale);
                for (int i = 16 * s; i < 16 * s + 16; i++)
                {
                    int q = BlockCodec.Level(input[i] * inverse + 32, 63);
                    int h = i / 128, g = i % 128 / 32, l = i % 32;
                    block[64 * h + 32 * (g % 2) + l] |= (byte)((q & 0xF) << (g < 2 ? 0 : 4));
                    block[HighBitsOffset + 32 * h + l] |= (byte)((q >> 4) << (2 * g));
                }
            }
        }
    }
}
