using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace KvPacket.Core.Memory;

/// <summary>
/// A whole file's bytes at one address: mapped in place (<see cref="Map"/>) or read into anonymous memory
/// (<see cref="Load(string)"/>). Checkpoint readers load: on the 2-core AMD EPYC VMs (Firecracker guests) kernels streaming
/// weights from a mapped file ran at 3–16 GB/s where the same bytes in anonymous memory ran at 45–59 GB/s (decode
/// 14–18 → 45–59 tokens/s, f16 prefill 1.9× faster; <c>benchmarks/results/weights-mapped-vs-loaded-2core-zen5-2026-12-02.txt</c>).
/// A file too large for the memory is mapped instead: reading it whole would end in the out-of-memory killer, where a
/// mapping lets the kernel page it.
/// </summary>
public sealed unsafe partial class FileBytes : IDisposable
{
    /// <summary>Loaded images are placed on 2 MB boundaries and advised as huge pages: a weight stream crosses fewer TLB entries.</summary>
    private const long HugePage = 2 << 20;

    private readonly MemoryMappedFile? _file;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _pointer;

    /// <param name="path">The file.</param>
    /// <param name="memoryBytes">Memory available: the file is read in when it takes at most three quarters of it; 0 maps.</param>
    private FileBytes(string path, long memoryBytes)
    {
        Path = path;
        // The length of what was opened, not of the path: a symbolic link (every Hugging Face cache snapshot is made of
        // them) has a length of its own, the target's path.
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
        Length = stream.Length;
        if (Length == 0) { stream.Dispose(); return; }
        if (Length <= memoryBytes / 4 * 3)
        {
            using (stream)
            {
                nuint reserved = (nuint)((Length + HugePage - 1) / HugePage * HugePage);
                _pointer = (byte*)NativeMemory.AlignedAlloc(reserved, (nuint)HugePage);
                if (OperatingSystem.IsLinux()) _ = Madvise((nint)_pointer, reserved, HugePageAdvice);
                try { ReadAll(stream); }
                catch { Dispose(); throw; }
            }
            return;
        }
        _file = MemoryMappedFile.CreateFromFile(stream, mapName: null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
        _view = _file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref _pointer);
        _pointer += _view.PointerOffset;
    }

    /// <summary>Maps <paramref name="path"/> read-only: nothing is read until it is touched (headers, metadata).</summary>
    public static FileBytes Map(string path) => new(path, memoryBytes: 0);

    /// <summary>
    /// Reads all of <paramref name="path"/> into 2 MB-aligned anonymous memory (weights that kernels stream) when it
    /// takes at most three quarters of this process's memory, and maps it otherwise.
    /// </summary>
    public static FileBytes Load(string path) => Load(path, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);

    /// <summary>As <see cref="Load(string)"/>, with <paramref name="memoryBytes"/> taken for the memory available.</summary>
    public static FileBytes Load(string path, long memoryBytes) => new(path, memoryBytes);

    /// <summary>Whether the bytes were read into memory (<see cref="Load(string)"/>) rather than mapped.</summary>
    public bool IsLoaded => _view is null && Length > 0;

    /// <summary>The file.</summary>
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
    /// Tells the kernel the whole pages inside [<paramref name="offset"/>, offset + <paramref name="length"/>) are not
    /// needed again (their data was copied elsewhere), so they leave the process's resident memory. Reading them again
    /// reads the file where it is mapped and zeros where it was loaded.
    /// </summary>
    public void Release(long offset, long length)
    {
        if (!OperatingSystem.IsLinux() || _pointer == null || offset < 0 || length <= 0 || offset + length > Length) return;
        const nint Page = 4096;
        nint first = ((nint)(_pointer + offset) + Page - 1) & ~(Page - 1), end = (nint)(_pointer + offset + length) & ~(Page - 1);
        if (end > first) _ = Madvise(first, (nuint)(end - first), DontNeed);
    }

    private void ReadAll(FileStream stream)
    {
        const int Chunk = 1 << 28;
        for (long done = 0; done < Length;)
        {
            int read = RandomAccess.Read(stream.SafeFileHandle, new Span<byte>(_pointer + done, (int)Math.Min(Chunk, Length - done)), done);
            if (read == 0) throw new IOException($"{Path} ended after {done} of its {Length} bytes while being read (changed under us?).");
            done += read;
        }
    }

    private const int DontNeed = 4; // MADV_DONTNEED
    private const int HugePageAdvice = 14; // MADV_HUGEPAGE

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_pointer != null)
        {
            if (_view is null) NativeMemory.AlignedFree(_pointer);
            else _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _pointer = null;
        }
        _view?.Dispose();
        _file?.Dispose();
    }
}
