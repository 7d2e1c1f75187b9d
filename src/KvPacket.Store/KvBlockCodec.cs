using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Numerics.Tensors;
using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;

namespace KvPacket.Store;

/// <summary>
/// Converts one KV block between the engine's layout (<see cref="KvCacheLayout"/>: per layer, K then V planes of
/// [kv heads, block, head dim] in f16 or f32) and its stored form. A block is a run of segments, one per
/// (layer, K/V, head), each block × head-dim values; int8 storage puts one f32 scale per segment in front of the
/// quantised values (<see cref="Int8KvBlock"/>).
/// </summary>
[SkipLocalsInit]
internal static class KvBlockCodec
{
    /// <summary>Bytes one block takes when stored as <paramref name="storage"/>.</summary>
    public static int StoredBytes(KvCacheLayout layout, KvStorage storage)
    {
        long values = layout.BlockBytes / layout.ElementBytes;
        return storage switch
        {
            KvStorage.F16 => checked((int)(values * 2)),
            KvStorage.F32 => checked((int)(values * 4)),
            KvStorage.Int8 => Int8KvBlock.Bytes(layout),
            _ => throw new ArgumentOutOfRangeException(nameof(storage), storage, null),
        };
    }

    /// <summary>
    /// Encodes the engine block <paramref name="block"/> (of <paramref name="layout"/>) into <paramref name="destination"/>;
    /// only its first <paramref name="rows"/> slots hold the packet's tokens. A converted block stores the rest as zeros:
    /// a free slot holds whatever its memory held before (a device's uninitialised memory, even NaN), which must not
    /// set an int8 segment's scale.
    /// </summary>
    public static void Encode(KvCacheLayout layout, ReadOnlySpan<byte> block, KvStorage storage, Span<byte> destination, int rows)
    {
        if (Matches(layout.Type, storage)) { block.CopyTo(destination); return; }
        int segments = Int8KvBlock.SegmentCount(layout), length = Int8KvBlock.SegmentLength(layout), filled = rows * layout.HeadDim;
        float[] rented = ArrayPool<float>.Shared.Rent(length);
        var values = rented.AsSpan(0, length);
        try
        {
            var scales = MemoryMarshal.Cast<byte, float>(destination[..(segments * 4)]);
            for (int s = 0; s < segments; s++)
            {
                ReadSegment(layout, block, s, values);
                values[filled..].Clear();
                switch (storage)
                {
                    case KvStorage.F16:
                        TensorPrimitives.ConvertToHalf(values, MemoryMarshal.Cast<byte, Half>(destination).Slice(s * length, length));
                        break;
                    case KvStorage.F32:
                        values.CopyTo(MemoryMarshal.Cast<byte, float>(destination).Slice(s * length, length));
                        break;
                    case KvStorage.Int8:
                        float max = TensorPrimitives.MaxMagnitude(values);
                        float scale = max / 127f;
                        scales[s] = scale;
                        var quantised = MemoryMarshal.Cast<byte, sbyte>(destination[(segments * 4)..]).Slice(s * length, length);
                        if (scale == 0) { quantised.Clear(); break; }
                        TensorPrimitives.Multiply(values, 1f / scale, values);
                        TensorPrimitives.Round(values, values);
                        TensorPrimitives.ConvertSaturating<float, sbyte>(values, quantised);
                        break;
                }
            }
        }
        finally { ArrayPool<float>.Shared.Return(rented); }
    }

    /// <summary>Decodes a stored block in <paramref name="source"/> into the engine block <paramref name="block"/>.</summary>
    public static void Decode(KvCacheLayout layout, ReadOnlySpan<byte> source, KvStorage storage, Span<byte> block)
    {
        if (Matches(layout.Type, storage)) { source.CopyTo(block); return; }
        int segments = Int8KvBlock.SegmentCount(layout), length = Int8KvBlock.SegmentLength(layout);
        float[] rented = ArrayPool<float>.Shared.Rent(length);
        var values = rented.AsSpan(0, length);
        try
        {
            var scales = MemoryMarshal.Cast<byte, float>(source[..(segments * 4)]);
            for (int s = 0; s < segments; s++)
            {
                switch (storage)
                {
                    case KvStorage.F16:
                        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source).Slice(s * length, length), values);
                        break;
                    case KvStorage.F32:
                        MemoryMarshal.Cast<byte, float>(source).Slice(s * length, length).CopyTo(values);
                        break;
                    case KvStorage.Int8:
                        TensorPrimitives.ConvertTruncating<sbyte, float>(MemoryMarshal.Cast<byte, sbyte>(source[(segments * 4)..]).Slice(s * length, length), values);
                        TensorPrimitives.Multiply(values, scales[s], values);
                        break;
                }
                WriteSegment(layout, values, s, block);
            }
        }
        finally { ArrayPool<float>.Shared.Return(rented); }
    }

    private static bool Matches(DType type, KvStorage storage) =>
        (type, storage) is (DType.F16, KvStorage.F16) or (DType.F32, KvStorage.F32);

    private static void ReadSegment(KvCacheLayout layout, ReadOnlySpan<byte> block, int segment, Span<float> values)
    {
        int length = values.Length;
        if (layout.Type == DType.F16) TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(block).Slice(segment * length, length), values);
        else MemoryMarshal.Cast<byte, float>(block).Slice(segment * length, length).CopyTo(values);
    }

    private static void WriteSegment(KvCacheLayout layout, ReadOnlySpan<float> values, int segment, Span<byte> block)
    {
        int length = values.Length;
        if (layout.Type == DType.F16) TensorPrimitives.ConvertToHalf(values, MemoryMarshal.Cast<byte, Half>(block).Slice(segment * length, length));
        else values.CopyTo(MemoryMarshal.Cast<byte, float>(block).Slice(segment * length, length));
    }
}
