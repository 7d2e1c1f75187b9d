namespace KvPacket.Core.Memory;

/// <summary>Element type of a tensor in memory or on disk.</summary>
public enum DType
{
    /// <summary>IEEE 754 binary32.</summary>
    F32,
    /// <summary>IEEE 754 binary16.</summary>
    F16,
    /// <summary>bfloat16: the upper 16 bits of a binary32.</summary>
    BF16,
    /// <summary>GGML q8_0: blocks of 32 int8 values with one f16 scale (34 bytes per block).</summary>
    Q8_0,
    /// <summary>GGML q4_0: blocks of 32 4-bit values with one f16 scale, value = scale · (q − 8) (18 bytes per block).</summary>
    Q4_0,
    /// <summary>GGML q4_K: super-blocks of 256 4-bit values in 8 sub-blocks with 6-bit scales and mins (144 bytes).</summary>
    Q4_K,
    /// <summary>GGML q5_K: q4_K with a fifth bit per value (176 bytes per 256).</summary>
    Q5_K,
    /// <summary>GGML q6_K: super-blocks of 256 6-bit values in 16 sub-blocks with int8 scales (210 bytes).</summary>
    Q6_K,
    /// <summary>q4_0 rows reordered at load, eight rows interleaved per block (<see cref="Checkpoints.InterleavedRows"/>); same bytes as q4_0. In memory only.</summary>
    Q4_0x8,
    /// <summary>q8_0 rows reordered at load, eight rows interleaved per block, levels stored offset by 128 (<see cref="Checkpoints.InterleavedRows"/>); same bytes as q8_0. In memory only.</summary>
    Q8_0x8,
    /// <summary>q5_K rows reordered at load, eight rows interleaved per super-block, scales and mins unpacked to bytes (180 bytes per 256 values). In memory only.</summary>
    Q5_Kx8,
    /// <summary>q6_K rows reordered at load, eight rows interleaved per super-block (<see cref="Checkpoints.InterleavedRows"/>); same bytes as q6_K. In memory only.</summary>
    Q6_Kx8,
    /// <summary>q4_K rows reordered at load, eight rows interleaved per super-block, scales and mins unpacked to bytes (148 bytes per 256 values). In memory only.</summary>
    Q4_Kx8,
}

/// <summary>Sizes of <see cref="DType"/> elements.</summary>
public static class DTypeSize
{
    /// <summary>Elements per block: 1 for plain types; a block format's tensors are whole blocks along each row.</summary>
    public static int BlockLength(this DType type) => type switch
    {
        DType.F32 or DType.F16 or DType.BF16 => 1,
        DType.Q8_0 or DType.Q4_0 or DType.Q4_0x8 or DType.Q8_0x8 => 32,
        DType.Q4_K or DType.Q5_K or DType.Q6_K or DType.Q4_Kx8 or DType.Q5_Kx8 or DType.Q6_Kx8 => 256,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>Bytes per block (per element for plain types; for interleaved layouts, a group's bytes over its eight rows).</summary>
    public static int BlockBytes(this DType type) => type switch
    {
        DType.F32 => 4,
        DType.F16 or DType.BF16 => 2,
        DType.Q8_0 or DType.Q8_0x8 => 34,
        DType.Q4_0 or DType.Q4_0x8 => 18,
        DType.Q4_K => 144,
        DType.Q5_K => 176,
        DType.Q6_K or DType.Q6_Kx8 => 210,
        DType.Q4_Kx8 => 148,
        DType.Q5_Kx8 => 180,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>Rows stored together: 8 for the interleaved layouts, else 1.</summary>
    public static int InterleavedRows(this DType type) => type is DType.Q4_0x8 or DType.Q4_Kx8 or DType.Q5_Kx8 or DType.Q8_0x8 or DType.Q6_Kx8 ? 8 : 1;

    /// <summary>The interleaved in-memory layout of a file type, if it has one.</summary>
    public static DType? Interleaved(this DType type) => type switch { DType.Q4_0 => DType.Q4_0x8, DType.Q4_K => DType.Q4_Kx8, DType.Q8_0 => DType.Q8_0x8, DType.Q6_K => DType.Q6_Kx8, DType.Q5_K => DType.Q5_Kx8, _ => null };

    /// <summary>Whether <paramref name="type"/> is a GGML block quantisation (or an interleaved layout of one).</summary>
    public static bool IsBlockQuantised(this DType type) => type.BlockLength() > 1;

    /// <summary>Bytes taken by <paramref name="count"/> elements of <paramref name="type"/>.</summary>
    public static long BytesFor(this DType type, long count)
    {
        int length = type.BlockLength();
        return count % length == 0
            ? count / length * type.BlockBytes()
            : throw new ArgumentException($"{type} needs a multiple of {length} elements, got {count}.", nameof(count));
    }
}
