using System.Runtime.Intrinsics;
using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// Finds infinities and NaNs among f16 weights. The CPU kernels widen f16 by integer operations that read them as large
/// finite numbers, so readers refuse such a file at load rather than compute with it.
/// </summary>
internal static unsafe class FiniteHalves
{
    /// <summary>Whether the f16 <paramref name="bits"/> are an infinity or a NaN (all exponent bits set).</summary>
    public static bool IsNonFinite(ushort bits) => (bits & 0x7C00) == 0x7C00;

    /// <summary>Index of the first f16 value at <paramref name="data"/> (of <paramref name="count"/>) that is infinite or NaN; -1 when all are finite.</summary>
    public static long IndexOfNonFinite(ushort* data, long count)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var exponent = Vector512.Create((ushort)0x7C00);
            for (; i <= count - 32; i += 32)
                if (Vector512.EqualsAny(Vector512.Load(data + i) & exponent, exponent)) break;
        }
        for (; i < count; i++)
            if (IsNonFinite(data[i])) return i;
        return -1;
    }

    /// <summary>Throws naming <paramref name="tensor"/> in <paramref name="path"/> when one of its f16 values is not finite.</summary>
    /// <exception cref="CheckpointFormatException">A value is infinite or NaN.</exception>
    public static void Require(string path, string tensor, void* data, long count)
    {
        long at = IndexOfNonFinite((ushort*)data, count);
        if (at >= 0)
            throw new CheckpointFormatException(path, tensor, $"f16 value {at} (bits 0x{((ushort*)data)[at]:x4}) is infinite or NaN; the weights are damaged");
    }
}
