namespace KvPacket.Core.Checkpoints;

/// <summary>
/// The 12 bytes of q4_K / q5_K super-blocks that hold eight 6-bit sub-block scales and eight 6-bit mins: bytes 0–3 the
/// scales of sub-blocks 0–3 and bytes 4–7 their mins (low 6 bits each; the top 2 bits carry the high bits of
/// sub-blocks 4–7), bytes 8–11 the low 4 bits of sub-blocks 4–7's scale (low nibble) and min (high nibble).
/// Also the quantiser both formats share: value = d·sc·q − dmin·m per 32-value sub-block.
/// </summary>
public static class KQuantScales
{
    /// <summary>Values per super-block.</summary>
    public const int SuperBlockSize = 256;
    /// <summary>Values per sub-block.</summary>
    public const int SubBlockSize = 32;
    /// <summary>Bytes of packed scales and mins.</summary>
    public const int Bytes = 12;

    /// <summary>Sub-block <paramref name="j"/>'s 6-bit scale and min.</summary>
    public static (int Scale, int Min) Get(ReadOnlySpan<byte> scales, int j) => j < 4
        ? (scales[j] & 63, scales[j + 4] & 63)
        : ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));

    /// <summary>Packs eight scales and eight mins (each 0–63) into <paramref name="scales"/>.</summary>
    public static void Set(Span<byte> scales, ReadOnlySpan<int> scale, ReadOnlySpan<int> min)
    {
        for (int j = 0; j < 4; j++)
        {
            scales[j] = (byte)(scale[j] | (scale[j + 4] >> 4) << 6);
            scales[j + 4] = (byte)(min[j] | (min[j + 4] >> 4) << 6);
            scales[j + 8] = (byte)((scale[j + 4] & 0xF) | (min[j + 4] & 0xF) << 4);
        }
    }

    /// <summary>
    /// Quantises 256 <paramref name="values"/> to levels 0..<paramref name="maxLevel"/>: each sub-block spans
    /// [min(0, lowest), highest]; the eight spans and offsets are themselves quantised to 6 bits against f16 d and dmin,
    /// written to <paramref name="header"/> (d, dmin) and <paramref name="scales"/>; <paramref name="levels"/> gets the
    /// 256 levels against the quantised scales.
    /// </summary>
    public static void Quantise(ReadOnlySpan<float> values, int maxLevel, Span<byte> header, Span<byte> scales, Span<byte> levels)
    {
        Span<float> step = stackalloc float[8], offset = stackalloc float[8];
        for (int j = 0; j < 8; j++)
        {
            var sub = values.Slice(j * SubBlockSize, SubBlockSize);
            float low = 0, high = float.MinValue;
            foreach (float v in sub) { low = MathF.Min(low, v); high = MathF.Max(high, v); }
            step[j] = (high - low) / maxLevel;
            offset[j] = -low;
        }
        float d = BlockCodec.WriteHalf(header, Max(step) / 63), dMin = BlockCodec.WriteHalf(header[2..], Max(offset) / 63);
        Span<int> scale = stackalloc int[8], min = stackalloc int[8];
        for (int j = 0; j < 8; j++)
        {
            scale[j] = d == 0 ? 0 : BlockCodec.Level(step[j] / d, 63);
            min[j] = dMin == 0 ? 0 : BlockCodec.Level(offset[j] / dMin, 63);
            float s = d * scale[j], m = dMin * min[j], inverse = s == 0 ? 0 : 1 / s;
            for (int i = 0; i < SubBlockSize; i++)
                levels[j * SubBlockSize + i] = (byte)BlockCodec.Level((values[j * SubBlockSize + i] + m) * inverse, maxLevel);
        }
        Set(scales, scale, min);
    }

    /// <summary>
    /// Expands q4_K (<paramref name="fifthBits"/> negative) or q5_K blocks: per sub-block j, value = d·sc_j·q − dmin·m_j,
    /// q from the 4-bit levels at <paramref name="levelsOffset"/> (32-byte group j/2, low nibbles for even j) and, for
    /// q5_K, bit j of the byte for that value at <paramref name="fifthBits"/> as bit 4.
    /// </summary>
    internal static void Dequantise(ReadOnlySpan<byte> blocks, Span<float> destination, int blockBytes, int levelsOffset, int fifthBits, string format)
    {
        int count = BlockCodec.Count(blocks.Length, destination.Length, SuperBlockSize, blockBytes, format);
        for (int b = 0; b < count; b++)
        {
            var block = blocks.Slice(b * blockBytes, blockBytes);
            float d = BlockCodec.Half(block), dMin = BlockCodec.Half(block[2..]);
            var scales = block.Slice(4, Bytes);
            var output = destination.Slice(b * SuperBlockSize, SuperBlockSize);
            for (int j = 0; j < 8; j++)
            {
                var (scale, min) = Get(scales, j);
                float s = d * scale, m = dMin * min;
                var low = block.Slice(levelsOffset + j / 2 * 32, 32);
                for (int l = 0; l < 32; l++)
                {
                    int q = j % 2 == 0 ? low[l] & 0xF : low[l] >> 4;
                    if (fifthBits >= 0) q |= ((block[fifthBits + l] >> j) & 1) << 4;
                    output[j * 32 + l] = s * q - m;
                }
            }
        }
    }

    private static float Max(ReadOnlySpan<float> values)
    {
        float max = 0;
        foreach (float v in values) max = MathF.Max(max, v);
        return max;
    }
}
