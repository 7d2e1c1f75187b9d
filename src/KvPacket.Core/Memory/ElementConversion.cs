using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace KvPacket.Core.Memory;

/// <summary>Vectorised conversion between f32 and the 16-bit float types.</summary>
public static class ElementConversion
{
    /// <summary>bf16 bits to f32: a bf16 value is the high half of the f32 with the same bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>f32 to bf16 bits with round-to-nearest-even; NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToBF16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>Widens bf16 values to f32.</summary>
    public static void BF16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("Destination is too short.", nameof(destination));
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= source.Length - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref src, (nuint)i));
                Vector512.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
                Vector512.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + Vector512<uint>.Count));
            }
        }
        for (; i <= source.Length - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
        {
            var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
            Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
            Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + Vector256<uint>.Count));
        }
        for (; i < source.Length; i++) Unsafe.Add(ref dst, i) = (uint)Unsafe.Add(ref src, i) << 16;
    }

    /// <summary>Narrows f32 values to bf16 with round-to-nearest-even.</summary>
    public static void SingleToBF16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("Destination is too short.", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = SingleToBF16(source[i]);
    }

    /// <summary>Widens f16 values to f32.</summary>
    public static void HalfToSingle(ReadOnlySpan<Half> source, Span<float> destination) =>
        TensorPrimitives.ConvertToSingle(source, destination);

    /// <summary>Narrows f32 values to f16 (round-to-nearest-even).</summary>
    public static void SingleToHalf(ReadOnlySpan<float> source, Span<Half> destination) =>
        TensorPrimitives.ConvertToHalf(source, destination);
}
