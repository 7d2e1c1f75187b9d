using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace KvPacket.Core.Memory;

/// <summary>
/// Scratch arrays for one call's work whose size follows the input: taken from the shared pool while small (so steady
/// work allocates nothing), allocated and left to the collector when large — the pool keeps what is returned to it, and
/// one hostile input (a megabyte "word" for the tokenizer) must not leave it holding hundreds of megabytes for good.
/// </summary>
public static class ScratchArrays<T>
{
    /// <summary>
    /// The longest array that is pooled: a power of two of at most 1 MiB. The pool hands out power-of-two lengths, so an
    /// array no longer than this came from it and one longer did not.
    /// </summary>
    public static readonly int MaxPooledLength = 1 << BitOperations.Log2((uint)Math.Max(1, (1 << 20) / Unsafe.SizeOf<T>()));

    /// <summary>An array of at least <paramref name="length"/> elements.</summary>
    public static T[] Rent(int length) => length <= MaxPooledLength ? ArrayPool<T>.Shared.Rent(length) : new T[length];

    /// <summary>Gives <paramref name="array"/> (from <see cref="Rent"/>) back: to the pool if it came from there, to the collector otherwise.</summary>
    public static void Return(T[] array)
    {
        if (array.Length <= MaxPooledLength) ArrayPool<T>.Shared.Return(array);
    }
}
