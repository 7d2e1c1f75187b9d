using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>The GGML block formats by <see cref="DType"/>: dequantise, quantise, and check their f16 scales.</summary>
public static class BlockQuantisation
{
    /// <summary>Expands blocks of <paramref name="type"/> into f32 <paramref name="destination"/>.</summary>
    public static void Dequantise(DType type, ReadOnlySpan<byte> blocks, Span<float> destination)
    {
        switch (type)
        {
            case DType.Q8_0: Q8_0.Dequantise(blocks, destination); break;
            case DType.Q4_0: Q4_0.Dequantise(blocks, destination); break;
            case DType.Q4_K: Q4_K.Dequantise(blocks, destination); break;
            case DType.Q5_K: Q5_K.Dequantise(blocks, destination); break;
            case DType.Q6_K: Q6_K.Dequantise(blocks, destination); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a block format");
        }
    }

    /// <summary>Quantises f32 <paramref name="values"/> into blocks of <paramref name="type"/>.</summary>
    public static void Quantise(DType type, ReadOnlySpan<float> values, Span<byte> destination)
    {
        switch (type)
        {
            case DType.Q8_0: Q8_0.Quantise(values, destination); break;
            case DType.Q4_0: Q4_0.Quantise(values, destination); break;
            case DType.Q4_K: Q4_K.Quantise(values, destination); break;
            case DType.Q5_K: Q5_K.Quantise(values, destination); break;
            case DType.Q6_K: Q6_K.Quantise(values, destination); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a block format");
        }
    }

    /// <summary>
    /// Throws naming <paramref name="tensor"/> in <paramref name="path"/> when one of the <paramref name="count"/> blocks at
    /// <paramref name="blocks"/> has an infinite or NaN f16 scale (d, and dmin where the format has one).
    /// </summary>
    /// <exception cref="CheckpointFormatException">A scale is not finite.</exception>
    public static unsafe void RequireFiniteScales(DType type, string path, string tensor, byte* blocks, long count)
    {
        var (first, second) = type switch
        {
            DType.Q8_0 or DType.Q4_0 => (0, -1),
            DType.Q4_K or DType.Q5_K => (0, 2),
            DType.Q6_K => (Q6_K.DOffset, -1),
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a block format"),
        };
        int stride = type.BlockBytes();
        for (long b = 0; b < count; b++)
        {
            byte* block = blocks + b * stride;
            if (FiniteHalves.IsNonFinite(*(ushort*)(block + first)) || (second >= 0 && FiniteHalves.IsNonFinite(*(ushort*)(block + second))))
                throw new CheckpointFormatException(path, tensor, $"{type.ToString().ToLowerInvariant()} block {b} has an infinite or NaN scale; the weights are damaged");
        }
    }
}
