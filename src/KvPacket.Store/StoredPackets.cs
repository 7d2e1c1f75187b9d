using KvPacket.Compute.Kv;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Store;

/// <summary>
/// Packets from a <see cref="PacketStore"/> with a resident tier in front: recently used packets stay in the model's KV
/// pool (least recently used evicted past <see cref="ResidentBlockBudget"/>), so a packet reused by the next request
/// costs no I/O; a miss loads from the store; a packet the store lacks comes from the <see cref="Shared"/> tier when
/// there is one (and, with <see cref="CopySharedToStore"/>, is copied to the store in the background), else it is built
/// once, stored durably, published to the shared tier, and kept.
/// A new packet is served as read back from the store, so what a request sees (int8 storage's rounding included) does
/// not depend on whether the packet was just built. On the CPU backend packets are read straight into the model's KV pool;
/// on the GPU they pass through a host staging pool (read there, then copied into device blocks; built ones copied out
/// to be stored; int8 packets cross as stored and are decoded on the device where the backend can): a packet's copy is
/// begun and the next packet is read into other staging blocks meanwhile, the copies
/// waited for only when the staging pool runs short. A device cache's packets can also be read ahead
/// (<see cref="Prefetch"/>): into free staging, on a pool thread, while the caller's step computes; the acquire then
/// only begins the copy. Thread-safe.
/// </summary>
public sealed class StoredPackets : IPacketSource
{
    private readonly IForwardBackend _model;
    private readonly KvBlockPool _host;
    private readonly bool _ownsHost;
    private readonly PacketStore _store;
    private readonly Dictionary<PacketId, LinkedListNode<(PacketId Id, Packet Packet)>> _resident = new();
    private readonly LinkedList<(PacketId Id, Packet Packet)> _recency = new();
    private readonly Lock _gate = new();
    private readonly List<Task> _copies = [];
    private readonly System.Collections.Concurrent.ConcurrentQueue<Packet> _copied = new();
    private readonly List<Packet> _importing = [];   // staged packets whose copies into the model's cache may be running
    private readonly Dictionary<PacketId, Task<(Packet? Host, bool Int8, double Seconds)>> _prefetched = new();   // reads ahead into staging (null: none fitted)
    private readonly Lock _staging = new();          // every allocation and release in the staging pool: reads ahead run on pool threads
    private int _residentBlocks;
    private long _localCopyFailures;

    /// <summary>
    /// Serves <paramref name="model"/>'s packets from <paramref name="store"/>, storing new ones as <paramref name="storage"/>,
    /// token-pruned to the fraction <paramref name="keep"/> of each document when below 1, sharing them with other nodes
    /// through <paramref name="shared"/> when given.
    /// </summary>
    public StoredPackets(IForwardBackend model, PacketStore store, KvStorage storage = KvStorage.F16, int? residentBlockBudget = null, double keep = 1.0,
        SharedPacketTier? shared = null)
    {
        _model = model;
        _store = store;
        Shared = shared;
        Storage = storage;
        Keep = keep;
        Fingerprint = ModelFingerprint.Of(model.Model);
        ResidentBlockBudget = residentBlockBudget ?? model.KvBlocks.BlockCount / 4;
        _ownsHost = model.KvBlocks is not KvBlockPool;
        // Staging for a device cache: room for one packet of the longest sequence — many of the usual size, so reads of
        // the next ones overlap the copies of the last. (Four times that measured slower on the H200: past the backend's
        // page-locked budget the pool is pageable, and the copies lose DMA.)
        _host = model.KvBlocks as KvBlockPool
            ?? model.CreateStagingPool((model.MaxSequenceLength + model.KvBlocks.Layout.BlockSize - 1) / model.KvBlocks.Layout.BlockSize + 1);
    }

    /// <summary>The model's fingerprint, which every packet id includes.</summary>
    public ModelFingerprint Fingerprint { get; }

    /// <summary>How new packets are stored.</summary>
    public KvStorage Storage { get; }

    /// <summary>Fraction of each document's tokens the packets keep (1: no pruning).</summary>
    public double Keep { get; }

    /// <summary>Most KV blocks kept resident (0: every acquire reads the store).</summary>
    public int ResidentBlockBudget { get; }

    /// <summary>Acquires served from the resident tier.</summary>
    public long ResidentHits { get; private set; }

    /// <summary>Acquires that read the packet from the store (read ahead or not).</summary>
    public long StoreLoads { get; private set; }

    /// <summary>Acquires whose store read had been done ahead (<see cref="Prefetch"/>).</summary>
    public long PrefetchedLoads { get; private set; }

    /// <summary>The tier shared with other nodes, below the store (null: none).</summary>
    public SharedPacketTier? Shared { get; }

    /// <summary>
    /// Whether packets loaded from the shared tier are also written to the local store (in the background), so the node
    /// keeps them when the tier is down or evicts them. Off by default: on a 2-core node the copies' commits took time to
    /// first token from 0.24 s to 1.2 s for requests running meanwhile (<c>kvpacket bench shared-tier</c>).
    /// </summary>
    public bool CopySharedToStore { get; init; }

    /// <summary>
    /// Whether int8 packets cross to a device cache as stored and are decoded there, where the backend can (the default:
    /// half the bytes of f16 over the bus, no decode on the host); off, the host decodes them as it does for the CPU.
    /// </summary>
    public bool DecodeInt8OnDevice { get; init; } = true;

    /// <summary>Acquires served by the shared tier.</summary>
    public long SharedLoads { get; private set; }

    /// <summary>Acquires that had to build the packet (and then stored it).</summary>
    public long Builds { get; private set; }

    /// <summary>Stored bytes read by <see cref="StoreLoads"/>.</summary>
    public long BytesLoaded { get; private set; }

    /// <summary>
    /// Seconds <see cref="StoreLoads"/> took: the reads (those done ahead included, though a step computed meanwhile), and
    /// for a device cache the copies into it — begun copies run on while the next packet is read and count as the time
    /// spent waiting for them, so the last copies before a step are counted only when a later load waits for them.
    /// </summary>
    public double LoadSeconds { get; private set; }

    /// <summary>The id <paramref name="document"/> has with <paramref name="adapter"/> under this model.</summary>
    public PacketId IdOf(ReadOnlySpan<int> document, Adapter? adapter) => PacketId.For(Fingerprint, AdapterRef.Of(adapter), document, Keep);

    /// <summary>Where packet loads and builds are recorded (null: nowhere).</summary>
    public Core.Diagnostics.TraceRecorder? Trace { get; set; }

    /// <inheritdoc />
    public Packet Acquire(ReadOnlySpan<int> document, Adapter? adapter)
    {
        var id = IdOf(document, adapter);
        lock (_gate)
        {
            ReleaseCopied();
            if (_resident.TryGetValue(id, out var node))
            {
                _recency.Remove(node);
                _recency.AddFirst(node);
                ResidentHits++;
                return node.Value.Packet.Share();
            }
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            if (TryTakePrefetched(id, out var packet, out long bytes) || TryLoad(id, out packet, out bytes))
            {
                StoreLoads++;
                BytesLoaded += bytes;
                LoadSeconds += System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
                Trace?.Record("packet load", "packets", Core.Diagnostics.TraceTracks.Packets, start, System.Diagnostics.Stopwatch.GetTimestamp(), "bytes", bytes, "tokens", document.Length);
            }
            else
            {
                // The shared tier and builds stage through the same pool, all of it theirs while they run.
                FinishImports();
                DropPrefetched();
                lock (_staging)
                    packet = Shared is not null && Shared.TryLoad(id, Fingerprint, _host, out var hostPacket)
                        ? FromShared(hostPacket, document, adapter, start)
                        : Build(id, document, adapter, start);
            }
            var shared = packet.Share();
            MakeResident(id, packet);
            return shared;
        }
    }

    /// <summary>A packet the shared tier had, in the model's cache (and copied to the local store when asked).</summary>
    private Packet FromShared(Packet hostPacket, ReadOnlySpan<int> document, Adapter? adapter, long start)
    {
        SharedLoads++;
        if (CopySharedToStore && !_store.IsReadOnly) KeepLocalCopy(hostPacket.Share(), document.ToArray(), adapter);
        Packet packet;
        using (hostPacket) packet = _model.ImportPacket(hostPacket);
        Trace?.Record("packet shared load", "packets", Core.Diagnostics.TraceTracks.Packets, start, System.Diagnostics.Stopwatch.GetTimestamp(), "tokens", document.Length);
        return packet;
    }

    /// <summary>Builds the packet, stores it durably, publishes it to the shared tier, and returns it as read back.</summary>
    private Packet Build(PacketId id, ReadOnlySpan<int> document, Adapter? adapter, long start)
    {
        using (var built = _model.BuildPacket(document, adapter?.Header ?? default, adapter?.Trailer ?? default, Keep))
        using (var host = _model.ExportPacket(built, _host))
            _store.PutAsync(host, Fingerprint, document.ToArray(), AdapterRef.Of(adapter), Storage, Keep).AsTask().GetAwaiter().GetResult();
        Builds++;
        Shared?.Publish(_store, id);
        if (!TryLoad(id, out var packet, out _)) throw new PacketStoreException($"packet {id} was stored but cannot be read back.");
        Trace?.Record("packet build", "packets", Core.Diagnostics.TraceTracks.Packets, start, System.Diagnostics.Stopwatch.GetTimestamp(), "tokens", document.Length);
        return packet;
    }

    /// <summary>
    /// Stores a packet that came from the shared tier in the local store too, so this node keeps it when the tier is
    /// down or evicts it — in the background: the durable commit (hundreds of ms on a slow disk) is not the request's.
    /// A copy that fails is only counted; the tier still holds the packet. The KV pool is the caller's thread's, so the
    /// copy's reference is handed back and let go on the next acquire, not on the background thread.
    /// </summary>
    private void KeepLocalCopy(Packet packet, int[] document, Adapter? adapter)
    {
        var copy = Task.Run(async () =>
        {
            try { await _store.PutAsync(packet, Fingerprint, document, AdapterRef.Of(adapter), Storage, Keep).ConfigureAwait(false); }
            catch (Exception e) when (e is PacketStoreException or ObjectDisposedException or IOException) { Interlocked.Increment(ref _localCopyFailures); }
            finally { _copied.Enqueue(packet); }
        });
        lock (_copies)
        {
            _copies.RemoveAll(t => t.IsCompleted);
            _copies.Add(copy);
        }
    }

    /// <summary>Waits until every local copy of a shared-tier packet started so far is durable (or has failed).</summary>
    public void WaitForLocalCopies()
    {
        Task[] pending;
        lock (_copies) pending = [.. _copies];
        Task.WaitAll(pending);
    }

    /// <summary>Local copies of shared-tier packets that could not be stored (the store full, say).</summary>
    public long LocalCopyFailures => Interlocked.Read(ref _localCopyFailures);

    /// <summary>
    /// Reads packet <paramref name="id"/> (<paramref name="storedBytes"/> in the store) into the model's cache: straight in
    /// on the CPU; through staging for a device cache, its copy begun and left running (the staging blocks released once
    /// the copies are waited for).
    /// </summary>
    private bool TryLoad(PacketId id, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Packet? packet, out long storedBytes)
    {
        packet = null;
        storedBytes = 0;
        if (!_store.TryGetInfo(id, out var info)) return false;
        storedBytes = info.StoredBytes;
        // The room is checked and taken under the staging lock, so a read ahead cannot take it in between; short of it,
        // wait for begun copies, then give up reads ahead, then load regardless (an exhausted pool then says so).
        int blocks = PacketStore.BlockCount(info);
        Packet? host;
        for (int attempt = 0; ; attempt++)
        {
            lock (_staging)
                if (!_ownsHost || attempt == 2 || _host.FreeBlockCount >= blocks)
                {
                    if (!_store.TryLoad(id, Fingerprint, _host, out host, KeepsInt8(info))) return false;
                    break;
                }
            if (attempt == 0) FinishImports();
            else DropPrefetched();
        }
        if (!_ownsHost)
        {
            using (host) packet = _model.ImportPacket(host);
            return true;
        }
        packet = BeginImport(host, KeepsInt8(info));
        return true;
    }

    /// <summary>Whether packet <paramref name="info"/> travels to the model's cache as stored, int8, and is decoded there (a device cache that can).</summary>
    private bool KeepsInt8(PacketInfo info) => _ownsHost && info.Storage == KvStorage.Int8 && DecodeInt8OnDevice && _model.DecodesInt8Blocks;

    /// <summary>The copy of a staged packet (<paramref name="int8"/>: in int8 blocks) into the model's cache, begun; the staged packet kept until the copy is waited for.</summary>
    private Packet BeginImport(Packet host, bool int8)
    {
        Packet packet;
        try { packet = int8 ? _model.BeginImportInt8(host) : _model.BeginImport(host); }
        catch
        {
            lock (_staging) host.Dispose();
            throw;
        }
        _importing.Add(host);
        return packet;
    }

    /// <inheritdoc />
    /// <remarks>
    /// For a device cache, a packet the store holds is read into free staging on a pool thread (one read at a time, and
    /// never one that would wait for copies or evict anything); builds and the shared tier wait for the acquire.
    /// </remarks>
    public bool Prefetch(ReadOnlySpan<int> document, Adapter? adapter)
    {
        if (!_ownsHost) return false;   // the CPU backend reads straight into its cache: there is nothing to read ahead into
        var id = IdOf(document, adapter);
        lock (_gate)
        {
            if (_prefetched.TryGetValue(id, out var pending)) return !pending.IsCompleted;
            if (_resident.ContainsKey(id) || !_store.TryGetInfo(id, out var info)) return false;
            int blocks = PacketStore.BlockCount(info);
            _prefetched[id] = Task.Run(() =>
            {
                lock (_staging)
                {
                    long start = System.Diagnostics.Stopwatch.GetTimestamp();
                    bool int8 = KeepsInt8(info);
                    var host = _host.FreeBlockCount >= blocks && _store.TryLoad(id, Fingerprint, _host, out var read, int8) ? read : null;
                    return (host, int8, System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds);
                }
            });
            return true;
        }
    }

    /// <summary>Packet <paramref name="id"/> from a finished read ahead, its copy begun; false when there was none (or it failed: the plain load then says why).</summary>
    private bool TryTakePrefetched(PacketId id, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Packet? packet, out long storedBytes)
    {
        packet = null;
        storedBytes = 0;
        if (!_prefetched.Remove(id, out var read)) return false;
        Packet? host;
        bool int8;
        try { (host, int8, double seconds) = read.GetAwaiter().GetResult(); LoadSeconds += seconds; }
        catch (Exception e) when (e is not OutOfMemoryException) { return false; }
        if (host is null) return false;
        if (!_store.TryGetInfo(id, out var info))
        {
            lock (_staging) host.Dispose();   // deleted since it was read: the plain load says so
            return false;
        }
        storedBytes = info.StoredBytes;
        packet = BeginImport(host, int8);
        PrefetchedLoads++;
        return true;
    }

    /// <summary>Lets go of the staged packets whose copies into the store have finished.</summary>
    private void ReleaseCopied()
    {
        lock (_staging)
            while (_copied.TryDequeue(out var copied)) copied.Dispose();
    }

    /// <summary>Waits for every read ahead and lets go of what they read.</summary>
    private void DropPrefetched()
    {
        foreach (var read in _prefetched.Values)
        {
            Packet? host = null;
            try { host = read.GetAwaiter().GetResult().Host; }
            catch (Exception e) when (e is not OutOfMemoryException) { }   // a read ahead that failed is only a hint lost
            if (host is not null) lock (_staging) host.Dispose();
        }
        _prefetched.Clear();
    }

    /// <summary>Waits for the begun copies and releases their staging blocks.</summary>
    private void FinishImports()
    {
        if (_importing.Count == 0) return;
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        _model.WaitForImports();
        LoadSeconds += System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
        lock (_staging)
            foreach (var host in _importing) host.Dispose();
        _importing.Clear();
    }

    private void MakeResident(PacketId id, Packet packet)
    {
        _resident[id] = _recency.AddFirst((id, packet));
        _residentBlocks += packet.Blocks.Count;
        while (_residentBlocks > ResidentBlockBudget && _recency.Last is { } oldest)
        {
            _recency.RemoveLast();
            _resident.Remove(oldest.Value.Id);
            _residentBlocks -= oldest.Value.Packet.Blocks.Count;
            oldest.Value.Packet.Dispose();
        }
    }

    /// <summary>Drops every resident packet (blocks in use by sequences stay until those let go).</summary>
    public void Dispose()
    {
        WaitForLocalCopies();
        lock (_gate)
        {
            ReleaseCopied();
            FinishImports();
            DropPrefetched();
            foreach (var (_, packet) in _recency) packet.Dispose();
            _recency.Clear();
            _resident.Clear();
            _residentBlocks = 0;
        }
        if (_ownsHost) _host.Dispose();
    }
}
