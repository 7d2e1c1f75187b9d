using System.IO.MemoryMappedFiles;

namespace KvPacket.Core.Memory;

/// <summary>A whole file mapped read-only into memory, so weights are used in place rather than copied.</summary>
public sealed unsafe partial class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _file;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _pointer;

    /// <summary>Maps <paramref name="path"/>.</summary>
    public MappedFile(string path)
    {
        Path = path;
        // The length of what was opened, not of the path: a symbolic link (every Hugging Face cache snapshot is made of
        // them) has a length of its own, the target's path.
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        Length = stream.Length;
        if (Length == 0) { stream.Dispose(); return; }
        _file = MemoryMappedFile.CreateFromFile(stream, mapName: null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        _view = _file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _pointer);
        _pointer += _view.PointerOffset;
    }

    /// <summary>The mapped file.</summary>
    public string Path { get; }

    /// <summary>File length in bytes.</summary>
    public long Length { get; }

    /// <summary>Address of the first byte.</summary>
    public byte* Pointer => _pointer;

    /// <summary>The bytes [<paramref name="offset"/>, offset + <paramref name="length"/>).</summary>
    public ReadOnlySpan<byte> Bytes(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside {Path} ({Length} bytes).");
        return new ReadOnlySpan<byte>(_pointer + offset, length);
    }

    /// <summary>
    /// Tells the kernel the pages of [<paramref name="offset"/>, offset + <paramref name="length"/>) are not needed again
    /// (their data was copied elsewhere), so they leave the process's resident memory; reading them again still works.
    /// </summary>
    public void Release(long offset, long length)
    {
        if (!OperatingSystem.IsLinux() || _pointer == null || offset < 0 || length <= 0 || offset + length > Length) return;
        const nint Page = 4096;
        nint first = ((nint)(_pointer + offset) + Page - 1) & ~(Page - 1), end = (nint)(_pointer + offset + length) & ~(Page - 1);
        if (end > first) _ = Madvise(first, (nuint)(end - first), DontNeed);
    }

    private const int DontNeed = 4; // MADV_DONTNEED

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_view is not null && _pointer != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointer = null;
        }
        _view?.Dispose();
        _file?.Dispose();
    }
}
