using KvPacket.Core.Memory;

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

    /// <summary>
    /// The RoPE layout of q/k rows under a GGUF architecture: llama.cpp's converter permutes <c>llama</c> models into the
    /// interleaved layout and leaves <c>qwen2</c> (NEOX-style rotation) in rotate-half.
    /// </summary>
    public static Model.RopeStyle RopeStyleOf(string architecture) => architecture == "qwen2" ? Model.RopeStyle.RotateHalf : Model.RopeStyle.Interleaved;

    /// <summary>The GGUF architectures read and written here.</summary>
    public static IReadOnlyList<string> Architectures { get; } = ["llama", "qwen2"];

    /// <summary>The element type a ggml tensor type is read as; null for types not supported here.</summary>
    public static DType? ElementType(TensorType type) => type switch
    {
        TensorType.F32 => DType.F32,
        TensorType.F16 => DType.F16,
        TensorType.BF16 => DType.BF16,
        TensorType.Q8_0 => DType.Q8_0,
        TensorType.Q4_0 => DType.Q4_0,
        TensorType.Q4_K => DType.Q4_K,
        TensorType.Q5_K => DType.Q5_K,
        TensorType.Q6_K => DType.Q6_K,
        _ => null,
    };

    /// <summary>The ggml tensor type of <paramref name="type"/>.</summary>
    public static TensorType TensorTypeOf(DType type) => Enum.GetValues<TensorType>().First(t => ElementType(t) == type);

    /// <summary>ggml tensor types this reader understands.</summary>
    public enum TensorType : uint
    {
        /// <summary>f32.</summary>
        F32 = 0,
        /// <summary>f16.</summary>
        F16 = 1,
        /// <summary>q4_0.</summary>
        Q4_0 = 2,
        /// <summary>q8_0.</summary>
        Q8_0 = 8,
        /// <summary>q4_K.</summary>
        Q4_K = 12,
        /// <summary>q5_K.</summary>
        Q5_K = 13,
        /// <summary>q6_K.</summary>
        Q6_K = 14,
        /// <summary>bf16.</summary>
        BF16 = 30,
    }
}
