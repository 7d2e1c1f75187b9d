using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace KvPacket.Store;

/// <summary>How a <see cref="PacketStore"/> is opened.</summary>
public sealed record PacketStoreOptions
{
    /// <summary>Open for reading only: no writer lock is taken, so any number of readers may share the directory with one writer.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Aim for packet pages (log records) of about this many bytes; a page holds whole KV blocks, at least one.</summary>
    public int TargetPageBytes { get; init; } = 1 << 20;

    /// <summary>log2 of FasterLog's page size for a new store (the largest record must fit in half a page); an existing store keeps its own.</summary>
    public int LogPageSizeBits { get; init; } = 23;

    /// <summary>log2 of the size of one log segment file for a new store (compaction frees whole segments); an existing store keeps its own.</summary>
    public int SegmentSizeBits { get; init; } = 30;

    /// <summary>Refuse writes that would grow the log (live and dead records) beyond this many bytes; null for no limit.</summary>
    public long? CapacityBytes { get; init; }

    /// <summary>Threads that read and check a packet's blocks in parallel (the process-wide pool when null; a busy pool loads on the caller's thread alone).</summary>
    public KvPacket.Compute.Threading.WorkerPool? Workers { get; init; }

    /// <summary>Where damaged records and recovery events are reported.</summary>
    public ILogger Logger { get; init; } = NullLogger.Instance;
}
