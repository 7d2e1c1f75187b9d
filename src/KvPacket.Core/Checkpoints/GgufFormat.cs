namespace KvPacket.Core.Checkpoints;

/// <summary>Constants of the GGUF container format (version 3).</summary>
public static class GgufFormat
{
    /// <summary>"GGUF" read as a little-endian uint32.</summary>
    public const uint Magic = 0x46554747;
    /// <summary>The format version written and read here.</summary>
    public const uint Version = 3;
    /// <summary>Tensor data alignment unless <c>general.alignment</c> says otherwise.</summary>
    public const int DefaultAlignment = 32;

    /// <summary>Metadata value types.</summary>
    public enum ValueType : uint
    {
        /// <summary>uint8.</summary>
        UInt8 = 0,
        /// <summary>int8.</summary>
        Int8 = 1,
        /// <summary>uint16.</summary>
        UInt16 = 2,
        /// <summary>int16.</summary>
        Int16 = 3,
        /// <summary>uint32.</summary>
        UInt32 = 4,
        /// <summary>int32.</summary>
        Int32 = 5,
        /// <summary>float32.</summary>
        Float32 = 6,
        /// <summary>bool (one byte).</summary>
        Bool = 7,
        /// <summary>uint64 length + UTF-8 bytes.</summary>
        String = 8,
        /// <summary>element type, uint64 count, elements.</summary>
        Array = 9,
        /// <summary>uint64.</summary>
        UInt64 = 10,
        /// <summary>int64.</summary>
        Int64 = 11,
        /// <summary>float64.</summary>
        Float64 = 12,
    }

    /// <summary>ggml tensor types this reader understands.</summary>
    public enum TensorType : uint
    {
        /// <summary>f32.</summary>
        F32 = 0,
        /// <summary>f16.</summary>
        F16 = 1,
        /// <summary>q8_0.</summary>
        Q8_0 = 8,
        /// <summary>bf16.</summary>
        BF16 = 30,
    }
}
