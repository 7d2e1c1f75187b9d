using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using FASTER.core;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Threading;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using Microsoft.Extensions.Logging;

namespace KvPacket.Store;

/// <summary>
/// A durable store of packets (documents' KV caches) and adapters on a FASTER log. A packet is written as pages of
/// whole KV blocks followed by a manifest; it exists once its manifest is committed, so a crash at any point leaves
/// either the whole packet or none of it. Packets are immutable: deletion appends a tombstone and
/// <see cref="CompactAsync"/> reclaims space. One writer per directory (a file lock); readers may open it read-only.
/// Loads read pages with positional reads straight into the engine's KV blocks, check every checksum, and allocate
/// nothing. Thread-safe: writes are serialised, reads run concurrently with each other and with writes.
/// </summary>
[SkipLocalsInit]
public sealed class PacketStore : IDisposable
{
    private const int MaxBlocksPerPage = 256;

    private readonly StoreDirectory _directory;
    private readonly PacketStoreOptions _options;
    private readonly IDevice _device;
    private readonly FasterLog _log;
    private readonly SegmentReader _reader;
    private readonly WorkerPool _workers;
    private readonly ReaderWriterLockSlim _indexLock = new(LockRecursionPolicy.NoRecursion);
    private readonly SemaphoreSlim _writeGate = new(1, 1);
    private PacketIndex _index;
    private bool _disposed;

    private PacketStore(StoreDirectory directory, PacketStoreOptions options)
    {
        _directory = directory;
        _options = options;
        Directory.CreateDirectory(directory.CommitDirectory);
        _device = Devices.CreateLogDevice(directory.LogBase, preallocateFile: false, deleteOnClose: false, recoverDevice: true);
        var settings = new FasterLogSettings
        {
            LogDevice = _device,
            PageSizeBits = directory.LogPageSizeBits,
            MemorySizeBits = directory.LogPageSizeBits + 2,
            SegmentSizeBits = directory.SegmentSizeBits,
            LogCommitDir = directory.CommitDirectory,
            ReadOnlyMode = options.ReadOnly,
            TryRecoverLatest = true,
        };
        _log = new FasterLog(settings);
        if (options.ReadOnly) _log.RecoverReadOnly();
        _workers = options.Workers ?? WorkerPool.Shared;
        _reader = new SegmentReader(directory.LogBase, directory.SegmentSizeBits, _log.HeaderSize);
        _index = LoadIndex();
    }

    /// <summary>Opens the store in <paramref name="directory"/>, creating it when writable and absent, and recovers its index.</summary>
    /// <exception cref="StoreLockedException">Another process is the writer.</exception>
    /// <exception cref="StoreFormatException">The directory holds a newer format, or is not a store.</exception>
    public static PacketStore Open(string directory, PacketStoreOptions? options = null)
    {
        options ??= new PacketStoreOptions();
        var files = StoreDirectory.Open(directory, options);
        try { return new PacketStore(files, options); }
        catch { files.Dispose(); throw; }
    }

    /// <summary>The store's directory.</summary>
    public string DirectoryPath => _directory.Path;

    /// <summary>Whether this handle may write.</summary>
    public bool IsReadOnly => _options.ReadOnly;

    /// <summary>
    /// Stores <paramref name="packet"/>, the KV of <paramref name="document"/> built by <paramref name="model"/> with
    /// <paramref name="adapter"/>, and returns once it is durably committed. Storing a packet the store already holds
    /// in the same form writes nothing.
    /// </summary>
    /// <exception cref="StoreFullException">The packet would take the store past its capacity; nothing was written.</exception>
    public async ValueTask<PacketInfo> PutAsync(Packet packet, ModelFingerprint model, ReadOnlyMemory<int> document, AdapterRef adapter,
        KvStorage storage = KvStorage.F16, double keep = 1.0, CancellationToken cancellation = default) =>
        (await PutManyAsync([new PacketWrite(packet, model, document, adapter, storage, keep)], cancellation).ConfigureAwait(false))[0];

    /// <summary>
    /// Stores several packets with one durable commit (group commit: far fewer synchronous writes than one
    /// <see cref="PutAsync"/> each). Returns once all are committed. If the store fills part-way, the packets before
    /// the one that did not fit are committed and the <see cref="StoreFullException"/> names the first that was not.
    /// </summary>
    public async ValueTask<PacketInfo[]> PutManyAsync(IReadOnlyList<PacketWrite> packets, CancellationToken cancellation = default)
    {
        ThrowIfNotWritable();
        var results = new PacketInfo[packets.Count];
        var appended = new List<StoredPacket>(packets.Count);
        await _writeGate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            try
            {
                for (int i = 0; i < packets.Count; i++)
                {
                    var write = packets[i];
                    if (write.Packet.IsPruned != write.Keep < 1)
                        throw new ArgumentException($"a {(write.Packet.IsPruned ? "token-pruned" : "whole")} packet stored with keep = {write.Keep}.", nameof(packets));
                    var id = PacketId.For(write.Model, write.Adapter, write.Document.Span, write.Keep);
                    var earlier = appended.FindLast(p => p.Info.Id == id);
                    if (earlier is not null && earlier.Info.Storage == write.Storage) { results[i] = earlier.Info; continue; }
                    if (earlier is null && TryGetEntry(id, out var existing) && existing.Info.Storage == write.Storage) { results[i] = existing.Info; continue; }
                    var entry = AppendPacket(write.Packet, id, write.Model, write.Document.Span, write.Adapter, write.Storage);
                    appended.Add(entry);
                    results[i] = entry.Info;
                }
            }
            finally
            {
                // Whatever reached the log is committed and indexed, even when a later packet did not fit.
                if (appended.Count > 0)
                {
                    await CommitAsync().ConfigureAwait(false);
                    WithIndexWrite(index =>
                    {
                        foreach (var entry in appended) index.Packets[entry.Info.Id] = entry;
                        return 0;
                    });
                }
            }
            return results;
        }
        finally { _writeGate.Release(); }
    }

    private StoredPacket AppendPacket(Packet packet, PacketId id, ModelFingerprint model, ReadOnlySpan<int> document, AdapterRef adapter, KvStorage storage)
    {
        var host = packet.Pool as KvBlockPool
            ?? throw new ArgumentException($"Packet {id} lives in GPU memory; the store writes packets from the CPU backend's cache.", nameof(packet));
        var layout = host.Layout;
        int blockBytes = KvBlockCodec.StoredBytes(layout, storage);
        int blocksPerPage = Math.Clamp(_options.TargetPageBytes / blockBytes, 1, MaxBlocksPerPage);
        int blockCount = packet.Blocks.Count;
        int pageCount = (blockCount + blocksPerPage - 1) / blocksPerPage;
        int manifestPayload = ManifestCodec.Size(adapter.Name, document.Length, pageCount);
        int largest = Math.Max(RecordHeader.Size + blocksPerPage * blockBytes, RecordHeader.Size + manifestPayload);
        if (largest > (1 << _directory.LogPageSizeBits) / 2)
            throw new PacketStoreException($"a record of {largest} bytes does not fit the log's {1 << _directory.LogPageSizeBits}-byte pages; raise LogPageSizeBits.");
        long needed = (long)blockCount * blockBytes + (pageCount + 1) * (RecordHeader.Size + 8L) + manifestPayload;
        if (_options.CapacityBytes is long capacity && _log.TailAddress - _log.BeginAddress + needed > capacity)
            throw new StoreFullException($"the packet store at {DirectoryPath} is full: {_log.TailAddress - _log.BeginAddress} of {capacity} bytes used, packet {id} needs {needed} more. Delete packets and compact, or raise the capacity.");

        byte[] buffer = ArrayPool<byte>.Shared.Rent(largest);
        try
        {
            var pages = new RecordRef[pageCount];
            long storedBytes = 0;
            for (int page = 0; page < pageCount; page++)
            {
                int first = page * blocksPerPage, count = Math.Min(blocksPerPage, blockCount - first);
                var checksum = new PayloadChecksum();
                for (int b = 0; b < count; b++)
                {
                    var chunk = buffer.AsSpan(RecordHeader.Size + b * blockBytes, blockBytes);
                    KvBlockCodec.Encode(layout, host.BlockBytes(packet.Blocks[first + b]), storage, chunk,
                        Math.Min(layout.BlockSize, packet.Length - (first + b) * layout.BlockSize));
                    checksum.Append(chunk);
                }
                int firstToken = first * layout.BlockSize;
                int tokens = Math.Min(count * layout.BlockSize, packet.Length - firstToken);
                int length = RecordHeader.Size + count * blockBytes;
                new RecordHeader(RecordKind.Page, storage, model, adapter.Hash, adapter.Version, page, id, tokens, count * blockBytes,
                    checksum.Value, layout.BlockSize, firstToken).Write(buffer);
                pages[page] = new RecordRef(_log.Enqueue(buffer.AsSpan(0, length)), length);
                storedBytes += length;
            }
            var payload = buffer.AsSpan(RecordHeader.Size, manifestPayload);
            ManifestCodec.Write(payload, adapter.Name, document, pages);
            int manifestLength = RecordHeader.Size + manifestPayload;
            new RecordHeader(RecordKind.Manifest, storage, model, adapter.Hash, adapter.Version, pageCount, id, packet.Length, manifestPayload,
                PayloadChecksum.Of(payload, int.MaxValue), layout.BlockSize, 0, packet.PositionSpan).Write(buffer);
            var manifest = new RecordRef(_log.Enqueue(buffer.AsSpan(0, manifestLength)), manifestLength);
            var info = new PacketInfo(id, model, adapter, storage, document.Length, packet.Length, packet.PositionSpan, layout.BlockSize, storedBytes + manifestLength);
            return new StoredPacket(info, manifest, pages);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>Whether the store holds packet <paramref name="id"/>.</summary>
    public bool Contains(PacketId id) => TryGetEntry(id, out _);

    /// <summary>What the store knows about packet <paramref name="id"/>, if it holds it.</summary>
    public bool TryGetInfo(PacketId id, out PacketInfo info)
    {
        bool found = TryGetEntry(id, out var entry);
        info = found ? entry!.Info : default;
        return found;
    }

    /// <summary>
    /// Loads packet <paramref name="id"/> into newly allocated blocks of <paramref name="pool"/>, or returns false when the
    /// store does not hold it. The packet owns its blocks; dispose it to return them. With <paramref name="keepInt8"/>, a
    /// packet stored as int8 keeps that form in its blocks (an <see cref="Int8KvBlock"/> at each block's start) for a
    /// backend that decodes it itself (<see cref="Engine.Forward.IForwardBackend.BeginImportInt8"/>).
    /// </summary>
    /// <exception cref="ModelMismatchException">The packet was built by another model.</exception>
    /// <exception cref="CorruptRecordException">A page failed its checks; no blocks are kept.</exception>
    public bool TryLoad(PacketId id, ModelFingerprint model, KvBlockPool pool, [NotNullWhen(true)] out Packet? packet, bool keepInt8 = false)
    {
        packet = null;
        if (!TryGetEntry(id, out var entry)) return false;
        int[] blocks = new int[BlockCount(entry.Info)];
        int allocated = 0;
        try
        {
            for (; allocated < blocks.Length; allocated++) blocks[allocated] = pool.Allocate();
            LoadInto(id, model, pool, blocks, keepInt8);
            packet = new Packet(pool, blocks, entry.Info.KvTokens, entry.Info.PositionSpan);
            return true;
        }
        catch
        {
            for (int i = 0; i < allocated; i++) pool.Release(blocks[i]);
            throw;
        }
    }

    /// <summary>
    /// Loads packet <paramref name="id"/> into the caller's <paramref name="blocks"/> of <paramref name="pool"/>
    /// (<see cref="BlockCount"/> of them, in position order). Checks the model, the layout and every page's header and
    /// checksum; allocates nothing. <paramref name="keepInt8"/> as for <see cref="TryLoad"/>.
    /// </summary>
    /// <exception cref="KeyNotFoundException">The store does not hold the packet.</exception>
    /// <exception cref="ModelMismatchException">The packet was built by another model.</exception>
    /// <exception cref="CorruptRecordException">A page failed its checks: the blocks' contents are undefined.</exception>
    public void LoadInto(PacketId id, ModelFingerprint model, KvBlockPool pool, ReadOnlySpan<int> blocks, bool keepInt8 = false)
    {
        _indexLock.EnterReadLock();
        try
        {
            if (!_index.Packets.TryGetValue(id, out var entry)) throw new KeyNotFoundException($"the packet store at {DirectoryPath} has no packet {id}.");
            var info = entry.Info;
            if (info.Model != model)
                throw new ModelMismatchException($"packet {id} was built by model {info.Model}, not by the loaded model {model}.");
            var layout = pool.Layout;
            if (layout.BlockSize != info.BlockSize)
                throw new PacketStoreException($"packet {id} is stored in blocks of {info.BlockSize} tokens; the KV pool uses {layout.BlockSize}.");
            if (blocks.Length != BlockCount(info))
                throw new ArgumentException($"packet {id} needs {BlockCount(info)} blocks, {blocks.Length} given.", nameof(blocks));
            int blockBytes = KvBlockCodec.StoredBytes(layout, info.Storage);
            bool asStored = keepInt8 && info.Storage == KvStorage.Int8;   // an int8 block fits in an f16 or f32 one
            bool direct = asStored || (layout.Type, info.Storage) is (Core.Memory.DType.F16, KvStorage.F16) or (Core.Memory.DType.F32, KvStorage.F32);
            var load = PacketLoad.ForThisThread();
            load.Begin(_reader, pool, info.Storage, direct, blockBytes, blocks.Length, _workers.ThreadCount);
            Span<ulong> checksums = entry.Pages.Length <= 256 ? stackalloc ulong[entry.Pages.Length] : new ulong[entry.Pages.Length];
            Span<byte> header = stackalloc byte[RecordHeader.Size];
            int next = 0;
            for (int page = 0; page < entry.Pages.Length; page++)
            {
                var record = entry.Pages[page];
                int count = (record.Length - RecordHeader.Size) / blockBytes;
                if (count < 1 || next + count > blocks.Length || RecordHeader.Size + count * blockBytes != record.Length)
                    throw new CorruptRecordException($"packet {id} page {page}: a {record.Length}-byte record does not hold whole {blockBytes}-byte blocks of this model's KV layout.");
                _reader.Read(record.Address, header);
                checksums[page] = RecordHeader.ReadPage(header, info, page, count * blockBytes, record.Address);
                for (int b = 0; b < count; b++) load.Set(next + b, record.Address, RecordHeader.Size + b * blockBytes, blocks[next + b]);
                next += count;
            }
            if (next != blocks.Length) throw new CorruptRecordException($"packet {id}: its pages hold {next} blocks, its manifest promises {blocks.Length}.");
            try { _workers.Run(load, blocks.Length); }
            finally { load.End(); }
            next = 0;
            for (int page = 0; page < entry.Pages.Length; page++)
            {
                int count = (entry.Pages[page].Length - RecordHeader.Size) / blockBytes;
                var checksum = new PayloadChecksum();
                for (int b = 0; b < count; b++) checksum.AppendHash(load.Hashes[next + b]);
                next += count;
                if (checksum.Value != checksums[page])
                    throw new CorruptRecordException($"packet {id} page {page} at log address {entry.Pages[page].Address}: payload checksum mismatch (damaged data).");
            }
        }
        finally { _indexLock.ExitReadLock(); }
    }

    /// <summary>Where packet <paramref name="id"/>'s records are (for tests that damage them on purpose).</summary>
    internal (RecordRef Manifest, RecordRef[] Pages) RecordsOf(PacketId id) =>
        TryGetEntry(id, out var entry) ? (entry.Manifest, entry.Pages) : throw new KeyNotFoundException(id.ToString());

    /// <summary>The segment file and offset that hold byte <paramref name="offset"/> of the record at <paramref name="address"/>.</summary>
    internal (string File, long Offset) FileOffsetOf(long address, int offset) =>
        ($"{_directory.LogBase}.{address >> _directory.SegmentSizeBits}", (address & ((1L << _directory.SegmentSizeBits) - 1)) + _log.HeaderSize + offset);

    /// <summary>KV blocks packet <paramref name="info"/> fills.</summary>
    public static int BlockCount(PacketInfo info) => (info.KvTokens + info.BlockSize - 1) / info.BlockSize;

    /// <summary>The document token ids packet <paramref name="id"/> was built from.</summary>
    /// <exception cref="KeyNotFoundException">The store does not hold the packet.</exception>
    public int[] ReadDocument(PacketId id)
    {
        if (!TryGetEntry(id, out var entry)) throw new KeyNotFoundException($"the packet store at {DirectoryPath} has no packet {id}.");
        return ReadManifest(entry.Manifest).Tokens;
    }

    /// <summary>Packet <paramref name="id"/> as stored: what it is, its document, and each page record (header and payload, checked), for another tier.</summary>
    /// <exception cref="KeyNotFoundException">The store does not hold the packet.</exception>
    /// <exception cref="CorruptRecordException">A record failed its checks.</exception>
    internal (PacketInfo Info, int[] Document, byte[][] Pages) ReadRecords(PacketId id)
    {
        if (!TryGetEntry(id, out var entry)) throw new KeyNotFoundException($"the packet store at {DirectoryPath} has no packet {id}.");
        return (entry.Info, ReadManifest(entry.Manifest).Tokens, entry.Pages.Select(p => ReadRecord(p, RecordKind.Page)).ToArray());
    }

    /// <summary>Live packets in the order they were stored, <paramref name="take"/> at most after skipping <paramref name="skip"/>.</summary>
    public IReadOnlyList<PacketInfo> List(int skip = 0, int take = 100)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(skip);
        ArgumentOutOfRangeException.ThrowIfNegative(take);
        return WithIndexRead(index => index.Packets.Values.OrderBy(p => p.Manifest.Address).Skip(skip).Take(take).Select(p => p.Info).ToArray());
    }

    /// <summary>Deletes packet <paramref name="id"/> (a durable tombstone); false when the store does not hold it.</summary>
    public async ValueTask<bool> DeleteAsync(PacketId id, CancellationToken cancellation = default)
    {
        ThrowIfNotWritable();
        await _writeGate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            if (!TryGetEntry(id, out var entry)) return false;
            var info = entry.Info;
            byte[] record = new byte[RecordHeader.Size];
            new RecordHeader(RecordKind.Tombstone, info.Storage, info.Model, info.Adapter.Hash, info.Adapter.Version, 0, id, 0, 0, 0, info.BlockSize, 0).Write(record);
            _log.Enqueue(record);
            await CommitAsync().ConfigureAwait(false);
            WithIndexWrite(index => index.Packets.Remove(id));
            return true;
        }
        finally { _writeGate.Release(); }
    }

    /// <summary>
    /// Stores a version of <paramref name="adapter"/> (trained for <paramref name="model"/>, rows of <paramref name="hiddenSize"/>)
    /// durably. Versions are immutable: storing the same name and version again with different values is an error.
    /// </summary>
    public async ValueTask PutAdapterAsync(Adapter adapter, ModelFingerprint model, int hiddenSize, CancellationToken cancellation = default)
    {
        ThrowIfNotWritable();
        if (string.IsNullOrEmpty(adapter.Id)) throw new ArgumentException("An adapter needs a name.", nameof(adapter));
        byte[] payload = AdapterCodec.Write(adapter, hiddenSize);
        var key = (adapter.Id, adapter.Version);
        await _writeGate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            var existing = WithIndexRead(index => index.Adapters.GetValueOrDefault(key));
            if (existing is not null)
            {
                if (existing.Model == model && ReadPayload(existing.Record, RecordKind.Adapter).AsSpan().SequenceEqual(payload)) return;
                throw new PacketStoreException($"adapter {adapter.Id} version {adapter.Version} is already stored with different values; versions are immutable, store a new version.");
            }
            byte[] record = new byte[RecordHeader.Size + payload.Length];
            var reference = AdapterRef.Of(adapter);
            new RecordHeader(RecordKind.Adapter, KvStorage.F32, model, reference.Hash, adapter.Version, 0, default, 0, payload.Length,
                PayloadChecksum.Of(payload, int.MaxValue), 0, 0).Write(record);
            payload.CopyTo(record, RecordHeader.Size);
            long address = _log.Enqueue(record);
            await CommitAsync().ConfigureAwait(false);
            WithIndexWrite(index => index.Adapters[key] = new StoredAdapter(reference, model, new RecordRef(address, record.Length)));
        }
        finally { _writeGate.Release(); }
    }

    /// <summary>Adapter <paramref name="name"/> at <paramref name="version"/> (the newest when null), or null when not stored.</summary>
    /// <exception cref="ModelMismatchException">The adapter was trained for another model.</exception>
    public Adapter? GetAdapter(string name, ModelFingerprint model, int? version = null)
    {
        var stored = WithIndexRead(index => index.Adapters.Values.Where(a => a.Adapter.Name == name && (version is null || a.Adapter.Version == version))
            .MaxBy(a => a.Adapter.Version));
        if (stored is null) return null;
        if (stored.Model != model) throw new ModelMismatchException($"adapter {stored.Adapter} was trained for model {stored.Model}, not for the loaded model {model}.");
        return AdapterCodec.Read(ReadPayload(stored.Record, RecordKind.Adapter), stored.Record.Address);
    }

    /// <summary>
    /// The adapter a reference names: <c>NAME</c> (the newest version) or <c>NAME@VERSION</c>, or null when not stored.
    /// </summary>
    /// <exception cref="ModelMismatchException">The adapter was trained for another model.</exception>
    public Adapter? FindAdapter(string reference, ModelFingerprint model)
    {
        string[] parts = reference.Split('@');
        int? version = parts.Length > 1 && int.TryParse(parts[1], System.Globalization.CultureInfo.InvariantCulture, out int v) ? v : null;
        return GetAdapter(parts[0], model, version);
    }

    /// <summary>Stored versions of adapter <paramref name="name"/>, oldest first.</summary>
    public IReadOnlyList<int> AdapterVersions(string name) =>
        WithIndexRead(index => index.Adapters.Keys.Where(k => k.Name == name).Select(k => k.Version).Order().ToArray());

    /// <summary>The end of the log this handle sees: the tail for the writer, the last commit for readers.</summary>
    private long LogEnd => IsReadOnly ? _log.CommittedUntilAddress : _log.TailAddress;

    /// <summary>Counts of packets, adapters and live versus dead bytes.</summary>
    public StoreStats Stats() =>
        WithIndexRead(index => new StoreStats(index.Packets.Count, index.Adapters.Count, index.LiveBytes, LogEnd - _log.BeginAddress));

    /// <summary>
    /// Rewrites every live record to the log's tail and truncates everything before: deleted, superseded and torn
    /// records are reclaimed (whole segment files are deleted). Readers keep working throughout; writers wait.
    /// A live packet whose pages fail their checks is dropped, with an error logged.
    /// </summary>
    public async ValueTask<StoreStats> CompactAsync(CancellationToken cancellation = default)
    {
        ThrowIfNotWritable();
        await _writeGate.WaitAsync(cancellation).ConfigureAwait(false);
        try
        {
            long until = _log.TailAddress;
            var (packets, adapters) = WithIndexRead(index => (index.Packets.Values.ToArray(), index.Adapters.Values.ToArray()));
            var movedPackets = new List<StoredPacket>(packets.Length);
            var dropped = new List<PacketId>();
            foreach (var packet in packets.OrderBy(p => p.Manifest.Address))
            {
                try { movedPackets.Add(CopyPacket(packet)); }
                catch (CorruptRecordException e)
                {
                    _options.Logger.LogError("compaction drops packet {Packet}: {Reason}", packet.Info.Id, e.Message);
                    dropped.Add(packet.Info.Id);
                }
            }
            var movedAdapters = adapters.Select(a => a with { Record = CopyRecord(a.Record, RecordKind.Adapter) }).ToArray();
            await CommitAsync().ConfigureAwait(false);
            WithIndexWrite(index =>
            {
                foreach (var packet in movedPackets) index.Packets[packet.Info.Id] = packet;
                foreach (var id in dropped) index.Packets.Remove(id);
                foreach (var adapter in movedAdapters) index.Adapters[(adapter.Adapter.Name, adapter.Adapter.Version)] = adapter;
                _log.TruncateUntil(until);
                _reader.DropBelow(until);
                return 0;
            });
            await CommitAsync().ConfigureAwait(false);
            SaveSnapshot();
            await WaitForSegmentsDeletedAsync(until).ConfigureAwait(false);
            return Stats();
        }
        finally { _writeGate.Release(); }
    }

    /// <summary>FasterLog deletes truncated segment files in the background after the commit; wait for it so a finished compaction has freed the space.</summary>
    private async Task WaitForSegmentsDeletedAsync(long until)
    {
        string path = $"{_directory.LogBase}.{(until >> _directory.SegmentSizeBits) - 1}";
        for (int wait = 0; wait < 1000 && File.Exists(path); wait++) await Task.Delay(10).ConfigureAwait(false);
        if (File.Exists(path)) _options.Logger.LogWarning("segment file {Path} was truncated but not yet deleted", path);
    }

    private StoredPacket CopyPacket(StoredPacket packet)
    {
        var manifest = ReadManifest(packet.Manifest);
        var pages = new RecordRef[packet.Pages.Length];
        for (int i = 0; i < pages.Length; i++) pages[i] = CopyRecord(packet.Pages[i], RecordKind.Page);
        var info = packet.Info;
        byte[] record = ManifestCodec.Record(info, manifest.Tokens, pages);
        var reference = new RecordRef(_log.Enqueue(record), record.Length);
        long bytes = reference.Length + pages.Sum(p => (long)p.Length);
        return new StoredPacket(info with { StoredBytes = bytes }, reference, pages);
    }

    private RecordRef CopyRecord(RecordRef record, RecordKind kind) => new(_log.Enqueue(ReadRecord(record, kind)), record.Length);

    /// <summary>
    /// Reads every record in the log and checks its header and payload checksum, every live packet's pages against
    /// its manifest, and the persisted index snapshot against the index the log implies.
    /// </summary>
    public StoreVerification Verify()
    {
        var problems = new List<string>();
        var snapshot = PacketIndex.TryLoad(_directory.SnapshotPath, out string? snapshotError);
        if (snapshotError is not null) problems.Add(snapshotError);
        var full = new PacketIndex { BeginAddress = _log.BeginAddress, CoveredUntil = _log.BeginAddress };
        PacketIndex? prefix = snapshot is null ? null : new PacketIndex { BeginAddress = _log.BeginAddress };
        var pages = new Dictionary<long, RecordHeader>();
        int records = 0;
        string? unreadable = Scan(_log.BeginAddress, _log.CommittedUntilAddress, (address, entry) =>
        {
            records++;
            if (LogRecord.Check(entry, address, out var header) is string error) { problems.Add($"record at log address {address}: {error}"); return; }
            if (header.Kind == RecordKind.Page) pages[address] = header;
            else LogRecord.Replay(full, header, entry, address, _options.Logger, problems);
            if (prefix is not null && address < snapshot!.CoveredUntil && header.Kind != RecordKind.Page)
                LogRecord.Replay(prefix, header, entry, address, _options.Logger, null);
        });
        if (unreadable is not null) problems.Add(unreadable);
        foreach (var packet in full.Packets.Values)
            for (int p = 0; p < packet.Pages.Length; p++)
                if (!pages.TryGetValue(packet.Pages[p].Address, out var page) || page.Packet != packet.Info.Id || page.PageIndex != p)
                    problems.Add($"packet {packet.Info.Id}: page {p} at log address {packet.Pages[p].Address} is missing or damaged");
        if (snapshot is not null)
        {
            if (snapshot.BeginAddress != _log.BeginAddress || snapshot.CoveredUntil > _log.CommittedUntilAddress)
                problems.Add($"index snapshot covers log [{snapshot.BeginAddress}, {snapshot.CoveredUntil}) but the log spans [{_log.BeginAddress}, {_log.CommittedUntilAddress})");
            else if (!snapshot.SameContentAs(prefix!))
                problems.Add("index snapshot disagrees with the log it covers");
        }
        return new StoreVerification(records, full.Packets.Count, full.Adapters.Count, problems);
    }

    private PacketIndex LoadIndex()
    {
        var index = PacketIndex.TryLoad(_directory.SnapshotPath, out string? error);
        if (error is not null) _options.Logger.LogError("{Error}; rebuilding the index from the log", error);
        if (index is not null && (index.BeginAddress != _log.BeginAddress || index.CoveredUntil > _log.CommittedUntilAddress || index.CoveredUntil < _log.BeginAddress))
        {
            _options.Logger.LogError("index snapshot covers log [{Begin}, {Until}) but the log spans [{LogBegin}, {Committed}); rebuilding the index from the log",
                index.BeginAddress, index.CoveredUntil, _log.BeginAddress, _log.CommittedUntilAddress);
            index = null;
        }
        index ??= new PacketIndex { BeginAddress = _log.BeginAddress, CoveredUntil = _log.BeginAddress };
        CatchUp(index);
        return index;
    }

    /// <summary>Replays committed records the index has not seen.</summary>
    private void CatchUp(PacketIndex index)
    {
        long until = _log.CommittedUntilAddress;
        if (index.CoveredUntil >= until) return;
        Scan(index.CoveredUntil, until, (address, entry) =>
        {
            if (LogRecord.Check(entry, address, out var header, checkPayload: false) is string error)
                _options.Logger.LogError("record at log address {Address} skipped: {Error}", address, error);
            else if (header.Kind != RecordKind.Page)
                LogRecord.Replay(index, header, entry, address, _options.Logger, null);
        });
        index.CoveredUntil = until;
    }

    /// <summary>Read-only handles: picks up what the writer has committed since opening (or the last refresh).</summary>
    public void Refresh()
    {
        if (!IsReadOnly) return;
        _log.RecoverReadOnly();
        WithIndexWrite(index =>
        {
            if (index.BeginAddress != _log.BeginAddress) _index = index = new PacketIndex { BeginAddress = _log.BeginAddress, CoveredUntil = _log.BeginAddress };
            CatchUp(index);
            return 0;
        });
    }

    /// <summary>Visits the records in [from, until); null when all were read, else why the log could not be read further.</summary>
    private string? Scan(long from, long until, LogRecord.Visitor visit)
    {
        if (from >= until) return null;
        using var iterator = _log.Scan(from, until, name: null, recover: false);
        try
        {
            while (iterator.GetNext(MemoryPool<byte>.Shared, out var owner, out int length, out long address))
                using (owner) visit(address, owner.Memory.Span[..length]);
            return null;
        }
        catch (Exception e) when (e is FasterException or InvalidOperationException or ArgumentException or IOException)
        {
            _options.Logger.LogError("the log cannot be read past address {Address}: {Error}", iterator.NextAddress, e.Message);
            return $"the log cannot be read past address {iterator.NextAddress}: {e.Message}";
        }
    }

    private (string AdapterName, int[] Tokens, RecordRef[] Pages) ReadManifest(RecordRef record) =>
        ManifestCodec.Read(ReadPayload(record, RecordKind.Manifest), record.Address);

    private byte[] ReadPayload(RecordRef record, RecordKind kind) => ReadRecord(record, kind)[RecordHeader.Size..];

    /// <summary>The whole record (header and payload) at <paramref name="record"/>, checked to be an undamaged <paramref name="kind"/> record.</summary>
    private byte[] ReadRecord(RecordRef record, RecordKind kind)
    {
        byte[] bytes = new byte[record.Length];
        _reader.Read(record.Address, bytes);
        string? error = LogRecord.Check(bytes, record.Address, out var header);
        if (error is null && header.Kind != kind) error = $"expected a {kind} record, found {header.Kind}";
        if (error is not null) throw new CorruptRecordException($"record at log address {record.Address}: {error}.");
        return bytes;
    }

    private bool TryGetEntry(PacketId id, [NotNullWhen(true)] out StoredPacket? entry)
    {
        _indexLock.EnterReadLock();
        try { return _index.Packets.TryGetValue(id, out entry); }
        finally { _indexLock.ExitReadLock(); }
    }

    private T WithIndexRead<T>(Func<PacketIndex, T> read)
    {
        _indexLock.EnterReadLock();
        try { return read(_index); }
        finally { _indexLock.ExitReadLock(); }
    }

    private void WithIndexWrite<T>(Func<PacketIndex, T> write)
    {
        _indexLock.EnterWriteLock();
        try { write(_index); }
        finally { _indexLock.ExitWriteLock(); }
    }

    private void SaveSnapshot()
    {
        WithIndexWrite(index =>
        {
            index.BeginAddress = _log.BeginAddress;
            index.CoveredUntil = _log.CommittedUntilAddress;
            index.Save(_directory.SnapshotPath);
            return 0;
        });
    }

    /// <summary>Commits the log up to its tail and waits until that is durable. FasterLog's own CommitAsync waits for
    /// the next commit when there is nothing new, so that case returns at once.</summary>
    private async ValueTask CommitAsync()
    {
        if (_log.TailAddress == _log.CommittedUntilAddress && _log.BeginAddress == _log.CommittedBeginAddress) return;
        // Not cancellable: once records are in the log they will be committed, and the index must say so.
        await _log.CommitAsync(CancellationToken.None).ConfigureAwait(false);
    }

    private void ThrowIfNotWritable()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (IsReadOnly) throw new InvalidOperationException($"the packet store at {DirectoryPath} is open read-only.");
    }

    /// <summary>Commits, saves the index snapshot (writers), and releases the log and the writer lock.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!IsReadOnly)
        {
            _log.Commit(spinWait: true);
            SaveSnapshot();
        }
        _reader.Dispose();
        _log.Dispose();
        _device.Dispose();
        _directory.Dispose();
        _indexLock.Dispose();
        _writeGate.Dispose();
    }
}
