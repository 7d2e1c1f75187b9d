namespace KvPacket.Core.Checkpoints;

/// <summary>GGML q8_0 blocks: an f16 scale followed by 32 int8 values; value = scale · q.</summary>
public static class Q8_0
{
    /// <summary>Values per block.</summary>
    public const int BlockSize = 32;
    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = 2 + BlockSize;

    /// <summary>Expands q8_0 <paramref name="blocks"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination)
    {
        int count = BlockCodec.Count(blocks.Length, destination.Length, BlockSize, BlockBytes, "q8_0");
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * BlockBytes, BlockBytes);
            float scale = BlockCodec.Half(block);
            var output = destination.Slice(b * BlockSize, BlockSize);
            for (int i = 0; i < BlockSize; i++) output[i] = scale * (sbyte)block[2 + i];
        }
    }

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 32) into q8_0 <paramref name="destination"/>.</summary>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = BlockCodec.Count(destination.Length, values.Length, BlockSize, BlockBytes, "q8_0");
        for (int b = 0; b < count; b++)
        {
            var input = values.Slice(b * BlockSize, BlockSize);
            float absMax = MathF.Abs(BlockCodec.SignedAbsMax(input));
            float scale = absMax / 127f;
            float inverse = scale == 0 ? 0 : 1 / scale;
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            BlockCodec.WriteHalf(block, scale);
            for (int i = 0; i < BlockSize; i++) block[2 + i] = (byte)(sbyte)Math.Round(input[i] * inverse);
        }
    }
}
