using System.Runtime.InteropServices;
using KvPacket.Core.Memory;

namespace KvPacket.Core.Checkpoints;

/// <summary>Encodes f32 values as the bytes of a checkpoint element type.</summary>
public static class TensorEncoding
{
    /// <summary>Writes <paramref name="values"/> as <paramref name="type"/> into <paramref name="destination"/>.</summary>
    public static void Encode(ReadOnlySpan<float> values, DType type, Span<byte> destination)
    {
        switch (type)
        {
            case DType.F32: MemoryMarshal.AsBytes(values).CopyTo(destination); break;
            case DType.F16: ElementConversion.SingleToHalf(values, MemoryMarshal.Cast<byte, Half>(destination)); break;
            case DType.BF16: ElementConversion.SingleToBF16(values, MemoryMarshal.Cast<byte, ushort>(destination)); break;
            default: BlockQuantisation.Quantise(type, values, destination); break;
        }
    }
}
