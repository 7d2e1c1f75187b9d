using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace KvPacket.Store;

/// <summary>
/// Reads committed log records straight from FasterLog's segment files with positional reads, so a packet page
/// lands in the engine's KV blocks in one <c>preadv</c> and without managed allocation. FasterLog lays a record at
/// logical address A in segment file <c>{base}.{A &gt;&gt; segment bits}</c> at offset <c>A mod segment size</c>,
/// after its own length prefix; records never cross pages, and pages never cross segments.
/// </summary>
internal sealed unsafe partial class SegmentReader : IDisposable
{
    private readonly string _basePath;
    private readonly int _segmentBits;
    private readonly int _prefixBytes;
    private readonly ConcurrentDictionary<long, SafeFileHandle> _handles = new();
    private readonly Lock _opening = new();

    public SegmentReader(string basePath, int segmentBits, int prefixBytes)
    {
        _basePath = basePath;
        _segmentBits = segmentBits;
        _prefixBytes = prefixBytes;
    }

    /// <summary>Reads <paramref name="destination"/>.Length bytes of the record at <paramref name="address"/>.</summary>
    public void Read(long address, Span<byte> destination)
    {
        fixed (byte* pointer = destination)
        {
            var vector = new IoVector { Base = pointer, Length = (nuint)destination.Length };
            ReadVectors(address, 0, &vector, 1);
        }
    }

    /// <summary>
    /// Reads the record at <paramref name="address"/>, from byte <paramref name="skip"/> of it on, into the buffers
    /// <paramref name="vectors"/> describes, in order (one <c>preadv</c> when the kernel completes it).
    /// </summary>
    public void ReadVectors(long address, long skip, IoVector* vectors, int count)
    {
        var handle = HandleFor(address);
        long offset = (address & ((1L << _segmentBits) - 1)) + _prefixBytes + skip;
        int fd = (int)handle.DangerousGetHandle();
        while (count > 0)
        {
            nint read = Preadv(fd, vectors, count, offset);
            if (read < 0) throw new PacketStoreException($"reading the record at log address {address} failed: errno {Marshal.GetLastPInvokeError()}.");
            if (read == 0) throw new CorruptRecordException($"the log ends inside the record at address {address} (segment file truncated).");
            offset += read;
            // Skip the vectors the kernel filled and trim the one it filled in part.
            while (count > 0 && read >= (nint)vectors->Length) { read -= (nint)vectors->Length; vectors++; count--; }
            if (count > 0) { vectors->Base += read; vectors->Length -= (nuint)read; }
        }
    }

    /// <summary>Closes the handles of segments wholly below <paramref name="address"/> (truncated by compaction).</summary>
    public void DropBelow(long address)
    {
        long first = address >> _segmentBits;
        foreach (var (segment, handle) in _handles)
            if (segment < first && _handles.TryRemove(segment, out _)) handle.Dispose();
    }

    private SafeFileHandle HandleFor(long address)
    {
        long segment = address >> _segmentBits;
        if (_handles.TryGetValue(segment, out var handle)) return handle;
        lock (_opening)
        {
            if (_handles.TryGetValue(segment, out handle)) return handle;
            string path = $"{_basePath}.{segment}";
            try
            {
                handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            }
            catch (FileNotFoundException)
            {
                throw new CorruptRecordException($"log segment file {path} for address {address} is missing.");
            }
            _handles[segment] = handle;
            return handle;
        }
    }

    public void Dispose()
    {
        foreach (var handle in _handles.Values) handle.Dispose();
        _handles.Clear();
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc", EntryPoint = "preadv", SetLastError = true)]
    private static partial nint Preadv(int fd, IoVector* vectors, int count, long offset);
}
