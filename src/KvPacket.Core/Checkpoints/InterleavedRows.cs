using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// The GGML block formats' rows reordered at load so that one integer multiply-add serves eight rows: rows are taken eight
/// at a time, and each 32-value block of the eight becomes 32-byte chunks where 32-bit lane i (bytes 4i..4i+3) holds
/// four consecutive values of row i — for 4-bit levels chunk k holds values 4k..4k+3 in its low nibbles and
/// 16+4k..16+4k+3 in its high nibbles (128 bytes), for q8_0 chunk k holds values 4k..4k+3 (256 bytes). Multiplying a
/// chunk by the activation's four values broadcast to every lane sums eight rows at once, with no horizontal
/// additions; the rows' scales sit together as vectors.
/// <list type="bullet">
/// <item>q8_0 → <see cref="DType.Q8_0x8"/>: per block, eight f16 d, then the 256 level bytes, each stored as level + 128
/// (unsigned, as <c>vpdpbusd</c> takes it; 272 bytes = 8 × 34).</item>
/// <item>q4_0 → <see cref="DType.Q4_0x8"/>: per block, eight f16 d, then the 128 level bytes (144 bytes = 8 × 18).</item>
/// <item>q4_K → <see cref="DType.Q4_Kx8"/>: per super-block, eight f16 d, eight f16 dmin, the 8 × 8 sub-block scales as
/// bytes (sub-block-major), the 8 × 8 mins likewise, then the eight sub-blocks' 128 level bytes (1,184 bytes = 8 × 148,
/// 2.8% over q4_K's 144: the 6-bit scales are unpacked once here instead of on every product).</item>
/// <item>q5_K → <see cref="DType.Q5_Kx8"/>: as q4_K, each 32-value block followed by 32 bytes of fifth bits — byte 4i+c
/// holds row i's value 4k+c's in bit k and value 16+4k+c's in bit 4+k (1,440 bytes = 8 × 180, 2.3% over q5_K).</item>
/// <item>q6_K → <see cref="DType.Q6_Kx8"/>: per super-block, eight f16 d, the 16 × 8 int8 scales (sub-block-major), then
/// per 32-value block the 128 bytes of low nibbles and 64 bytes of high bit pairs — byte 4i+c of the first 32 holds
/// bits 4–5 of row i's values 4k+c in its bits 2k..2k+1, the second 32 likewise for values 16+4k+c (1,680 bytes = 8 × 210).</item>
/// </list>
/// </summary>
public static unsafe class InterleavedRows
{
    /// <summary>Bytes of one q4_0 group block (eight rows × 32 values).</summary>
    public const int Q4_0GroupBlockBytes = 8 * Q4_0.BlockBytes;
    /// <summary>Bytes of one q8_0 group block (eight rows × 32 values).</summary>
    public const int Q8_0GroupBlockBytes = 8 * Q8_0.BlockBytes;
    /// <summary>Bytes of one q4_K group super-block (eight rows × 256 values).</summary>
    public const int Q4_KGroupBlockBytes = 8 * 148;
    /// <summary>Offset of the q4_K group's dmin values.</summary>
    public const int Q4_KMinScalesOffset = 16;
    /// <summary>Offset of the q4_K group's sub-block scales (8 sub-blocks × 8 rows).</summary>
    public const int Q4_KScalesOffset = 32;
    /// <summary>Offset of the q4_K group's sub-block mins (8 sub-blocks × 8 rows).</summary>
    public const int Q4_KMinsOffset = 96;
    /// <summary>Offset of the q4_K group's levels (8 sub-blocks × 128 bytes).</summary>
    public const int Q4_KLevelsOffset = 160;

    /// <summary>Bytes of one q5_K group super-block (eight rows × 256 values); its header is laid out as q4_K's.</summary>
    public const int Q5_KGroupBlockBytes = 8 * 180;
    /// <summary>Bytes of one q5_K group's 32-value block (128 of nibbles, 32 of fifth bits).</summary>
    public const int Q5_KBlockBytes = 160;

    /// <summary>Bytes of one q6_K group super-block (eight rows × 256 values).</summary>
    public const int Q6_KGroupBlockBytes = 8 * Q6_K.BlockBytes;
    /// <summary>Offset of the q6_K group's scales (16 sub-blocks × 8 rows).</summary>
    public const int Q6_KScalesOffset = 16;
    /// <summary>Offset of the q6_K group's 32-value blocks (192 bytes each: 128 of nibbles, 64 of high bits).</summary>
    public const int Q6_KLevelsOffset = 144;
    /// <summary>Bytes of one q6_K group's 32-value block.</summary>
    public const int Q6_KBlockBytes = 192;

    /// <summary>Reorders <paramref name="rows"/> (a multiple of 8) rows of <paramref name="type"/> (q4_0, q4_K, q5_K, q6_K or q8_0) from <paramref name="source"/> into <paramref name="destination"/>.</summary>
    /// <remarks>Groups are independent: they are reordered in parallel, 64 at a time (a 1B model's load, not a hot path).</remarks>
    public static void Interleave(DType type, byte* source, int rows, int columns, byte* destination)
    {
        if (rows % 8 != 0) throw new ArgumentException($"{rows} rows are not whole groups of 8.", nameof(rows));
        if (type.Interleaved() is null) throw new ArgumentOutOfRangeException(nameof(type), type, "only q4_0, q4_K, q5_K, q6_K and q8_0 are interleaved");
        const int Chunk = 64;
        int groups = rows / 8;
        Parallel.For(0, (groups + Chunk - 1) / Chunk, c => InterleaveGroups(type, source, columns, destination, c * Chunk, Math.Min(groups, (c + 1) * Chunk)));
    }

    private static void InterleaveGroups(DType type, byte* source, int columns, byte* destination, int firstGroup, int endGroup)
    {
        long rowBytes = type.BytesFor(columns);
        int blocks = columns / type.BlockLength();
        Span<byte> levels = stackalloc byte[256];
        Span<byte> sixBit = stackalloc byte[256];
        for (int g = firstGroup; g < endGroup; g++)
        {
            byte* group = destination + g * 8 * (type.Interleaved() ?? type).BytesFor(columns);
            for (int b = 0; b < blocks; b++)
                for (int i = 0; i < 8; i++)
                {
                    byte* block = source + (8L * g + i) * rowBytes + (long)b * type.BlockBytes();
                    if (type == DType.Q4_0)
                    {
                        byte* target = group + (long)b * Q4_0GroupBlockBytes;
                        ((ushort*)target)[i] = *(ushort*)block;
                        for (int v = 0; v < 32; v++) levels[v] = (byte)(v < 16 ? block[2 + v] & 0xF : block[2 + v - 16] >> 4);
                        PutLevels(levels, i, target + 16);
                    }
                    else if (type == DType.Q8_0)
                    {
                        byte* target = group + (long)b * Q8_0GroupBlockBytes;
                        ((ushort*)target)[i] = *(ushort*)block;
                        for (int v = 0; v < 32; v++) target[16 + 32 * (v / 4) + 4 * i + v % 4] = (byte)(block[2 + v] ^ 0x80);
                    }
                    else if (type == DType.Q6_K)
                    {
                        byte* target = group + (long)b * Q6_KGroupBlockBytes;
                        var original = new ReadOnlySpan<byte>(block, Q6_K.BlockBytes);
                        ((ushort*)target)[i] = *(ushort*)(block + Q6_K.DOffset);
                        for (int s = 0; s < 16; s++) target[Q6_KScalesOffset + 8 * s + i] = block[Q6_K.ScalesOffset + s];
                        for (int e = 0; e < 256; e++) sixBit[e] = (byte)Q6_K.Level(original, e);
                        for (int j = 0; j < 8; j++)
                        {
                            var block6 = sixBit.Slice(32 * j, 32);
                            for (int v = 0; v < 32; v++) levels[v] = (byte)(block6[v] & 0xF);
                            byte* at = target + Q6_KLevelsOffset + Q6_KBlockBytes * j;
                            PutLevels(levels[..32], i, at);
                            for (int half = 0; half < 2; half++)
                                for (int c = 0; c < 4; c++)
                                {
                                    int bits = 0;
                                    for (int k = 0; k < 4; k++) bits |= (block6[16 * half + 4 * k + c] >> 4) << (2 * k);
                                    at[128 + 32 * half + 4 * i + c] = (byte)bits;
                                }
                        }
                    }
                    else if (type is DType.Q4_K or DType.Q5_K)
                    {
                        bool five = type == DType.Q5_K;
                        byte* target = group + (long)b * (five ? Q5_KGroupBlockBytes : Q4_KGroupBlockBytes);
                        ((ushort*)target)[i] = *(ushort*)block;
                        ((ushort*)(target + Q4_KMinScalesOffset))[i] = *(ushort*)(block + 2);
                        var scales = new ReadOnlySpan<byte>(block + 4, KQuantScales.Bytes);
                        for (int j = 0; j < 8; j++)
                        {
                            var (scale, min) = KQuantScales.Get(scales, j);
                            target[Q4_KScalesOffset + 8 * j + i] = (byte)scale;
                            target[Q4_KMinsOffset + 8 * j + i] = (byte)min;
                            byte* packed = block + (five ? Q5_K.LevelsOffset : Q4_K.LevelsOffset) + j / 2 * 32;
                            for (int v = 0; v < 32; v++) levels[v] = (byte)(j % 2 == 0 ? packed[v] & 0xF : packed[v] >> 4);
                            byte* at = target + Q4_KLevelsOffset + (five ? Q5_KBlockBytes : 128) * j;
                            PutLevels(levels[..32], i, at);
                            if (!five) continue;
                            byte* high = block + Q5_K.HighBitsOffset;
                            for (int c = 0; c < 4; c++)
                            {
                                int bits = 0;
                                for (int k = 0; k < 4; k++)
                                    bits |= ((high[4 * k + c] >> j) & 1) << k | ((high[16 + 4 * k + c] >> j) & 1) << (4 + k);
                                at[128 + 4 * i + c] = (byte)bits;
                            }
                        }
                    }
                    else throw new ArgumentOutOfRangeException(nameof(type), type, "only q4_0, q4_K, q6_K and q8_0 are interleaved");
                }
        }
    }

    /// <summary>Row <paramref name="row"/> of an interleaved tensor, dequantised into <paramref name="destination"/> (<paramref name="columns"/> values).</summary>
    public static void ReadRow(DType type, byte* data, int row, int columns, Span<float> destination)
    {
        int g = row / 8, i = row % 8;
        Span<byte> levels = stackalloc byte[32];
        if (type == DType.Q4_0x8)
        {
            byte* group = data + (long)g * 8 * type.BytesFor(columns);
            for (int b = 0; b < columns / 32; b++)
            {
                byte* block = group + (long)b * Q4_0GroupBlockBytes;
                float d = (float)BitConverter.UInt16BitsToHalf(((ushort*)block)[i]);
                GetLevels(block + 16, i, levels);
                for (int v = 0; v < 32; v++) destination[32 * b + v] = d * (levels[v] - 8);
            }
        }
        else if (type == DType.Q8_0x8)
        {
            byte* group = data + (long)g * 8 * type.BytesFor(columns);
            for (int b = 0; b < columns / 32; b++)
            {
                byte* block = group + (long)b * Q8_0GroupBlockBytes;
                float d = (float)BitConverter.UInt16BitsToHalf(((ushort*)block)[i]);
                for (int v = 0; v < 32; v++) destination[32 * b + v] = d * (sbyte)(block[16 + 32 * (v / 4) + 4 * i + v % 4] ^ 0x80);
            }
        }
        else if (type == DType.Q6_Kx8)
        {
            byte* group = data + (long)g * 8 * type.BytesFor(columns);
            for (int b = 0; b < columns / 256; b++)
            {
                byte* block = group + (long)b * Q6_KGroupBlockBytes;
                float d = (float)BitConverter.UInt16BitsToHalf(((ushort*)block)[i]);
                for (int j = 0; j < 8; j++)
                {
                    byte* at = block + Q6_KLevelsOffset + Q6_KBlockBytes * j;
                    GetLevels(at, i, levels);
                    for (int v = 0; v < 32; v++)
                    {
                        int high = (at[128 + 32 * (v / 16) + 4 * i + v % 4] >> (2 * (v % 16 / 4))) & 3;
                        float scale = d * (sbyte)block[Q6_KScalesOffset + 8 * (2 * j + v / 16) + i];
                        destination[256 * b + 32 * j + v] = scale * ((levels[v] | high << 4) - 32);
                    }
                }
            }
        }
        else if (type is DType.Q4_Kx8 or DType.Q5_Kx8)
        {
            bool five = type == DType.Q5_Kx8;
            byte* group = data + (long)g * 8 * type.BytesFor(columns);
            for (int b = 0; b < columns / 256; b++)
            {
                byte* block = group + (long)b * (five ? Q5_KGroupBlockBytes : Q4_KGroupBlockBytes);
                float d = (float)BitConverter.UInt16BitsToHalf(((ushort*)block)[i]);
                float dMin = (float)BitConverter.UInt16BitsToHalf(((ushort*)(block + Q4_KMinScalesOffset))[i]);
                for (int j = 0; j < 8; j++)
                {
                    float s = d * block[Q4_KScalesOffset + 8 * j + i], m = dMin * block[Q4_KMinsOffset + 8 * j + i];
                    byte* at = block + Q4_KLevelsOffset + (five ? Q5_KBlockBytes : 128) * j;
                    GetLevels(at, i, levels);
                    for (int v = 0; v < 32; v++)
                    {
                        int fifth = five ? (at[128 + 4 * i + v % 4] >> (v / 16 * 4 + v % 16 / 4)) & 1 : 0;
                        destination[256 * b + 32 * j + v] = s * (levels[v] | fifth << 4) - m;
                    }
                }
            }
        }
        else throw new ArgumentOutOfRangeException(nameof(type), type, "not an interleaved layout");
    }

    /// <summary>Writes one row's 32 levels into lane <paramref name="lane"/> of a 128-byte interleaved block.</summary>
    private static void PutLevels(ReadOnlySpan<byte> levels, int lane, byte* block)
    {
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < 4; c++)
                block[32 * k + 4 * lane + c] = (byte)(levels[4 * k + c] | levels[16 + 4 * k + c] << 4);
    }

    private static void GetLevels(byte* block, int lane, Span<byte> levels)
    {
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < 4; c++)
            {
                byte packed = block[32 * k + 4 * lane + c];
                levels[4 * k + c] = (byte)(packed & 0xF);
                levels[16 + 4 * k + c] = (byte)(packed >> 4);
            }
    }
}
