using System.Runtime.InteropServices;

namespace KvPacket.Core.Memory;

/// <summary>
/// A block of 64-byte-aligned native memory holding <typeparamref name="T"/> elements, zeroed on allocation unless the
/// caller writes every element first.
/// Hot paths see it only as spans or pointers, so the GC never moves or scans it.
/// </summary>
public sealed unsafe class NativeBuffer<T> : IDisposable where T : unmanaged
{
    /// <summary>Alignment of every buffer: one cache line, and one AVX-512 register.</summary>
    public const int Alignment = 64;

    private T* _pointer;

    /// <summary>Allocates <paramref name="length"/> zeroed elements.</summary>
    public NativeBuffer(long length) : this(length, zeroed: true)
    {
    }

    /// <summary>
    /// Allocates <paramref name="length"/> elements, zeroed when <paramref name="zeroed"/>; a buffer the caller fills
    /// whole at once (weights reordered at load) skips the clearing pass.
    /// </summary>
    public NativeBuffer(long length, bool zeroed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
        nuint bytes = (nuint)Math.Max(1, length * sizeof(T));
        _pointer = (T*)NativeMemory.AlignedAlloc(bytes, Alignment);
        if (zeroed) NativeMemory.Clear(_pointer, bytes);
    }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Address of the first element.</summary>
    public T* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(NativeBuffer<T>));

    /// <summary>The whole buffer (at most <see cref="int.MaxValue"/> elements).</summary>
    public Span<T> Span => new(Pointer, checked((int)Length));

    /// <summary>A slice of the buffer, for buffers larger than a span can cover.</summary>
    public Span<T> Slice(long start, int length)
    {
        if ((ulong)start > (ulong)Length || (ulong)length > (ulong)(Length - start))
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start + length}) is outside a buffer of {Length} elements.");
        return new Span<T>(Pointer + start, length);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_pointer != null)
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the memory if the owner forgot to.</summary>
    ~NativeBuffer() => Dispose();
}
