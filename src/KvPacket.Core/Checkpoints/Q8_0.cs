using System.Buffers.Binary;

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
        int count = blocks.Length / BlockBytes;
        if (blocks.Length % BlockBytes != 0 || destination.Length != count * BlockSize)
            throw new ArgumentException($"{blocks.Length} bytes of q8_0 do not make {destination.Length} values.");
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * BlockBytes, BlockBytes);
            float scale = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(block));
            var output = destination.Slice(b * BlockSize, BlockSize);
            for (int i = 0; i < BlockSize; i++) output[i] = scale * (sbyte)block[2 + i];
        }
    }

    /// <summary>Throws naming <paramref name="tensor"/> in <paramref name="path"/> when a block's f16 scale is infinite or NaN (the kernels read scales by integer operations).</summary>
    /// <exception cref="Model.CheckpointFormatException">A scale is not finite.</exception>
    public static unsafe void RequireFiniteScales(string path, string tensor, byte* blocks, long count)
    {
        for (long b = 0; b < count; b++)
            if (FiniteHalves.IsNonFinite(*(ushort*)(blocks + b * BlockBytes)))
                throw new Model.CheckpointFormatException(path, tensor, $"q8_0 block {b} has an infinite or NaN scale; the weights are damaged");
    }

    /// <summary>Quantises f32 <paramref name="values"/> (a multiple of 32) into q8_0 <paramref name="destination"/>.</summary>
    public static void Quantise(ReadOnlySpan<float> values, Span<byte> destination)
    {
        int count = values.Length / BlockSize;
        if (values.Length % BlockSize != 0 || destination.Length != count * BlockBytes)
            throw new ArgumentException($"{values.Length} values do not make {destination.Length} bytes of q8_0.");
        for (int b = 0; b < count; b++)
        {
            var input = values.Slice(b * BlockSize, BlockSize);
            float absMax = 0;
            foreach (float v in input) absMax = MathF.Max(absMax, MathF.Abs(v));
            float scale = absMax / 127f;
            float inverse = scale == 0 ? 0 : 1 / scale;
            var block = destination.Slice(b * BlockBytes, BlockBytes);
            BinaryPrimitives.WriteUInt16LittleEndian(block, BitConverter.HalfToUInt16Bits((Half)scale));
            for (int i = 0; i < BlockSize; i++) block[2 + i] = (byte)(sbyte)Math.Round(input[i] * inverse);
        }
    }
}
