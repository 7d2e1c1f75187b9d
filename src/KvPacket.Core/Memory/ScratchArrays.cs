using System.Buffers;
using System.Runtime.CompilerServices;

namespace KvPacket.Core.Memory;

/// <summary>
/// Scratch arrays for one call's work whose size follows the input: taken from the shared pool while small (so steady
/// work allocates nothing), allocated and left to the collector when large — the pool keeps what is returned to it, and
/// one hostile input (a megabyte "word" for the tokenizer) must not leave it holding hundreds of megabytes for good.
/// </summary>
public static class ScratchArrays<T>
{
    /// <summary>Arrays up to this many bytes go back to the pool.</summary>
    public const int MaxPooledBytes = 1 << 20;

    /// <summary>An array of at least <paramref name="length"/> elements.</summary>
    public static T[] Rent(int length) =>
        (long)length * Unsafe.SizeOf<T>() <= MaxPooledBytes ? ArrayPool<T>.Shared.Rent(length) : new T[length];

    /// <summary>Gives <paramref name="array"/> back: to the pool if it is small, to the collector otherwise.</summary>
    public static void Return(T[] array)
    {
        if ((long)array.Length * Unsafe.SizeOf<T>() <= 2L * MaxPooledBytes) ArrayPool<T>.Shared.Return(array);
    }
}
