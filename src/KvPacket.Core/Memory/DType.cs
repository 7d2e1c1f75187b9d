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
}

/// <summary>Sizes of <see cref="DType"/> elements.</summary>
public static class DTypeSize
{
    /// <summary>Bytes taken by <paramref name="count"/> elements of <paramref name="type"/>.</summary>
    public static long BytesFor(this DType type, long count) => type switch
    {
        DType.F32 => count * 4,
        DType.F16 or DType.BF16 => count * 2,
        DType.Q8_0 => count % 32 == 0
            ? count / 32 * 34
            : throw new ArgumentException($"q8_0 needs a multiple of 32 elements, got {count}.", nameof(count)),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };
}
