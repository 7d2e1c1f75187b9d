using System.Buffers.Binary;

namespace KvPacket.Core.Checkpoints;

/// <summary>Small pieces the GGML block codecs share: size checks, f16 fields, rounding to a level.</summary>
internal static class BlockCodec
{
    /// <summary>The number of blocks, after checking that <paramref name="bytes"/> of blocks hold <paramref name="values"/> values.</summary>
    public static int Count(int bytes, int values, int blockSize, int blockBytes, string format)
    {
        int count = bytes / blockBytes;
        if (bytes % blockBytes != 0 || values != count * blockSize)
            throw new ArgumentException($"{bytes} bytes of {format} do not hold {values} values.");
        return count;
    }

    /// <summary>The f16 at the start of <paramref name="bytes"/>, widened.</summary>
    public static float Half(ReadOnlySpan<byte> bytes) => (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(bytes));

    /// <summary>Stores <paramref name="value"/> as f16 at the start of <paramref name="bytes"/> and returns the stored value.</summary>
    public static float WriteHalf(Span<byte> bytes, float value)
    {
        var half = (Half)value;
        BinaryPrimitives.WriteUInt16LittleEndian(bytes, BitConverter.HalfToUInt16Bits(half));
        return (float)half;
    }

    /// <summary>The element of largest magnitude, with its sign.</summary>
    public static float SignedAbsMax(ReadOnlySpan<float> values)
    {
        float extreme = 0;
        foreach (float v in values) if (MathF.Abs(v) > MathF.Abs(extreme)) extreme = v;
        return extreme;
    }

    /// <summary><paramref name="value"/> rounded to the nearest integer in [0, <paramref name="max"/>].</summary>
    public static int Level(float value, int max) => Math.Clamp((int)MathF.Round(value), 0, max);
}
