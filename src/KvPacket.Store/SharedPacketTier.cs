using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using KvPacket.Compute.Kv;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Polly;
using Polly.Retry;
using StackExchange.Redis;

namespace KvPacket.Store;

/// <summary>
/// Packets shared by many nodes on a server speaking the Redis protocol (Garnet, Redis, a cluster of either), under each
/// node's local <see cref="PacketStore"/>. A packet is the local store's own records: its pages (whole KV blocks, about
/// 1 MiB each, header and checksum included) under <c>PREFIX:{ID}:p0…</c> and a manifest under <c>PREFIX:{ID}:m</c>,
/// written last and only once every page is acknowledged, so a half-written packet is never visible. The hash tag
/// <c>{ID}</c> keeps a packet's keys on one cluster slot. A load checks the manifest's model fingerprint and every
/// page's header and payload checksum while copying the bytes from pooled leases straight into KV blocks; a corrupt or
/// foreign value is logged, counted and reported as a miss, never served. Commands time out and are retried; while the
/// server is unreachable every call is a quick miss and the node serves from its local tiers. Thread-safe.
/// </summary>
public sealed class SharedPacketTier : IDisposable
{
    private readonly ConnectionMultiplexer _connection;
    private readonly IDatabase _database;
    private readonly ResiliencePipeline _retry;
    private readonly ILogger _logger;
    private readonly string _prefix;
    private long _hits, _misses, _errors, _unavailable, _bytesRead, _bytesWritten, _publishes;

    private SharedPacketTier(ConnectionMultiplexer connection, SharedTierOptions options, ILogger logger)
    {
        _connection = connection;
        _database = connection.GetDatabase();
        _logger = logger;
        _prefix = options.KeyPrefix;
        Endpoint = options.Endpoint.Split(',')[0];
        _retry = options.Retries == 0 ? ResiliencePipeline.Empty : new ResiliencePipelineBuilder().AddRetry(new RetryStrategyOptions
        {
            ShouldHandle = new PredicateBuilder().Handle<RedisConnectionException>().Handle<RedisTimeoutException>(),
            MaxRetryAttempts = options.Retries,
            Delay = options.RetryDelay,
            BackoffType = DelayBackoffType.Exponential,
        }).Build();
    }

    /// <summary>
    /// Connects to the tier. An unreachable server is not an error: it is logged, the tier answers every call with a
    /// miss, and the connection is retried in the background.
    /// </summary>
    public static SharedPacketTier Connect(SharedTierOptions options, ILogger? logger = null)
    {
        logger ??= NullLogger.Instance;
        var configuration = ConfigurationOptions.Parse(options.Endpoint);
        configuration.AbortOnConnectFail = false;
        configuration.ConnectRetry = 1;
        configuration.ConnectTimeout = configuration.SyncTimeout = configuration.AsyncTimeout = (int)options.Timeout.TotalMilliseconds;
        var connection = ConnectionMultiplexer.Connect(configuration);
        var tier = new SharedPacketTier(connection, options, logger);
        if (!connection.IsConnected)
            logger.LogWarning("the shared packet tier at {Endpoint} is unreachable; serving from the local tiers and reconnecting in the background", tier.Endpoint);
        return tier;
    }

    /// <summary>The server's host and port.</summary>
    public string Endpoint { get; }

    /// <summary>Whether the server is reachable now.</summary>
    public bool IsConnected => _connection.IsConnected;

    /// <summary>Loads served by the tier.</summary>
    public long Hits => Volatile.Read(ref _hits);

    /// <summary>Loads of packets the tier does not hold.</summary>
    public long Misses => Volatile.Read(ref _misses);

    /// <summary>Loads and publications that failed: a corrupt or foreign value, or a server error.</summary>
    public long Errors => Volatile.Read(ref _errors);

    /// <summary>Calls skipped because the server was unreachable.</summary>
    public long Unavailable => Volatile.Read(ref _unavailable);

    /// <summary>Bytes of packet records read by <see cref="Hits"/>.</summary>
    public long BytesRead => Volatile.Read(ref _bytesRead);

    /// <summary>Bytes of packet records written by <see cref="Publishes"/>.</summary>
    public long BytesWritten => Volatile.Read(ref _bytesWritten);

    /// <summary>Packets published.</summary>
    public long Publishes => Volatile.Read(ref _publishes);

    /// <summary>Called after a publication's pages are acknowledged and before its manifest is written (tests stop the server here).</summary>
    internal Action<PacketId>? AfterPagesWritten { get; set; }

    /// <summary>The key of packet <paramref name="id"/>'s manifest.</summary>
    public string ManifestKey(PacketId id) => $"{_prefix}:{{{id}}}:m";

    /// <summary>The key of packet <paramref name="id"/>'s page <paramref name="page"/>.</summary>
    public string PageKey(PacketId id, int page) => $"{_prefix}:{{{id}}}:p{page}";

    private string DocumentKey(string name) => $"{_prefix}:doc:{name}";

    /// <summary>
    /// Loads packet <paramref name="id"/> into new blocks of <paramref name="pool"/>; false when the tier does not hold
    /// it, is unreachable, or holds a value that fails its checks (logged and counted in <see cref="Errors"/>).
    /// </summary>
    public bool TryLoad(PacketId id, ModelFingerprint model, KvBlockPool pool, [NotNullWhen(true)] out Packet? packet)
    {
        packet = null;
        if (!IsConnected) { Interlocked.Increment(ref _unavailable); return false; }
        string manifestKey = ManifestKey(id);
        int[]? blocks = null;
        int allocated = 0;
        try
        {
            PacketInfo info;
            RecordRef[] pages;
            using (var manifest = _retry.Execute(static s => s.Database.StringGetLease(s.Key), (Database: _database, Key: (RedisKey)manifestKey)))
            {
                if (manifest is null) { Interlocked.Increment(ref _misses); return false; }
                (info, pages) = ReadManifest(id, model, manifest.Span, manifestKey);
            }
            if (info.BlockSize != pool.Layout.BlockSize)
                throw new CorruptRecordException($"packet {id} under key {manifestKey} is stored in blocks of {info.BlockSize} tokens; the KV pool uses {pool.Layout.BlockSize}.");
            blocks = new int[PacketStore.BlockCount(info)];
            for (; allocated < blocks.Length; allocated++) blocks[allocated] = pool.Allocate();
            long bytes = LoadPages(id, info, pages, pool, blocks);
            packet = new Packet(pool, blocks, info.KvTokens, info.PositionSpan);
            Interlocked.Increment(ref _hits);
            Interlocked.Add(ref _bytesRead, bytes);
            return true;
        }
        catch (Exception e) when (e is PacketStoreException or RedisException or TimeoutException)
        {
            for (int i = 0; i < allocated; i++) pool.Release(blocks![i]);
            Interlocked.Increment(ref _errors);
            _logger.LogError("shared tier: packet {Packet} not loaded: {Error}", id, e.Message);
            return false;
        }
    }

    /// <summary>The manifest record's packet, checked: whole, this packet, this model, pages numbered in order.</summary>
    private static (PacketInfo Info, RecordRef[] Pages) ReadManifest(PacketId id, ModelFingerprint model, ReadOnlySpan<byte> record, string key)
    {
        if (LogRecord.Check(record, 0, out var header) is string error)
            throw new CorruptRecordException($"the manifest under key {key}: {error}.");
        if (header.Kind != RecordKind.Manifest)
            throw new CorruptRecordException($"the value under key {key} is a {header.Kind} record, not a manifest.");
        if (header.Model != model)
            throw new ModelMismatchException($"the packet under key {key} was built by model {header.Model}, not by the loaded model {model}; refused.");
        if (header.Packet != id)
            throw new CorruptRecordException($"the manifest under key {key} is packet {header.Packet}'s, not {id}'s.");
        var (adapterName, tokens, pages) = ManifestCodec.Read(record[RecordHeader.Size..], 0);
        long bytes = record.Length;
        for (int p = 0; p < pages.Length; p++)
        {
            if (pages[p].Address != p) throw new CorruptRecordException($"the manifest under key {key} lists page {pages[p].Address} in place {p}.");
            bytes += pages[p].Length;
        }
        return (PacketInfo.FromManifest(header, adapterName, tokens.Length, bytes), pages);
    }

    /// <summary>Fetches every page at once, then copies (or decodes) each block from its lease into its KV block, checking as it goes.</summary>
    private long LoadPages(PacketId id, PacketInfo info, RecordRef[] pages, KvBlockPool pool, int[] blocks)
    {
        var layout = pool.Layout;
        int blockBytes = KvBlockCodec.StoredBytes(layout, info.Storage);
        bool direct = (layout.Type, info.Storage) is (Core.Memory.DType.F16, KvStorage.F16) or (Core.Memory.DType.F32, KvStorage.F32);
        var gets = ArrayPool<Task<Lease<byte>?>>.Shared.Rent(pages.Length);
        var keys = ArrayPool<string>.Shared.Rent(pages.Length);
        int started = 0, consumed = 0;
        long bytes = 0;
        try
        {
            for (; started < pages.Length; started++)
            {
                keys[started] = PageKey(id, started);
                gets[started] = _retry.ExecuteAsync(static (s, _) => new ValueTask<Lease<byte>?>(s.Database.StringGetLeaseAsync(s.Key)),
                    (Database: _database, Key: (RedisKey)keys[started])).AsTask();
            }
            int next = 0;
            for (int page = 0; page < pages.Length; page++)
            {
                consumed = page + 1;
                using var lease = gets[page].GetAwaiter().GetResult()
                    ?? throw new CorruptRecordException($"packet {id} page {page}: its manifest is in the tier but key {keys[page]} is missing.");
                var record = lease.Span;
                int count = (record.Length - RecordHeader.Size) / blockBytes;
                if (record.Length != pages[page].Length || count < 1 || next + count > blocks.Length || RecordHeader.Size + count * blockBytes != record.Length)
                    throw new CorruptRecordException($"packet {id} page {page} under key {keys[page]}: a {record.Length}-byte value, its manifest says {pages[page].Length}, in {blockBytes}-byte blocks.");
                ulong expected = RecordHeader.ReadPage(record, info, page, count * blockBytes, 0, keys[page]);
                var checksum = new PayloadChecksum();
                for (int b = 0; b < count; b++)
                {
                    var stored = record.Slice(RecordHeader.Size + b * blockBytes, blockBytes);
                    checksum.Append(stored);
                    if (direct) stored.CopyTo(pool.BlockBytes(blocks[next + b]));
                    else KvBlockCodec.Decode(layout, stored, info.Storage, pool.BlockBytes(blocks[next + b]));
                }
                if (checksum.Value != expected)
                    throw new CorruptRecordException($"packet {id} page {page} under key {keys[page]}: payload checksum mismatch (damaged data).");
                next += count;
                bytes += record.Length;
            }
            if (next != blocks.Length) throw new CorruptRecordException($"packet {id}: its pages in the tier hold {next} blocks, its manifest promises {blocks.Length}.");
            return bytes;
        }
        finally
        {
            // Pages not reached (a failure part-way) still hand their pooled buffers back.
            for (int page = consumed; page < started; page++)
                gets[page].ContinueWith(static t => { if (t.IsCompletedSuccessfully) t.Result?.Dispose(); }, TaskScheduler.Default);
            ArrayPool<Task<Lease<byte>?>>.Shared.Return(gets, clearArray: true);
            ArrayPool<string>.Shared.Return(keys, clearArray: true);
        }
    }

    /// <summary>
    /// Copies packet <paramref name="id"/> from <paramref name="store"/> to the tier: every page, then — once all are
    /// acknowledged — the manifest. False (logged, counted) when the server is unreachable or a write failed; a packet
    /// whose manifest was not written stays invisible.
    /// </summary>
    public bool Publish(PacketStore store, PacketId id)
    {
        if (!IsConnected) { Interlocked.Increment(ref _unavailable); return false; }
        try
        {
            var (info, document, pages) = store.ReadRecords(id);
            var references = new RecordRef[pages.Length];
            var writes = new Task[pages.Length];
            long bytes = 0;
            for (int p = 0; p < pages.Length; p++)
            {
                references[p] = new RecordRef(p, pages[p].Length);
                writes[p] = Set(PageKey(id, p), pages[p]);
                bytes += pages[p].Length;
            }
            Task.WhenAll(writes).GetAwaiter().GetResult();
            AfterPagesWritten?.Invoke(id);
            byte[] manifest = ManifestCodec.Record(info, document, references);
            Set(ManifestKey(id), manifest).GetAwaiter().GetResult();
            Interlocked.Increment(ref _publishes);
            Interlocked.Add(ref _bytesWritten, bytes + manifest.Length);
            return true;
        }
        catch (Exception e) when (e is PacketStoreException or RedisException or TimeoutException)
        {
            Interlocked.Increment(ref _errors);
            _logger.LogError("shared tier: packet {Packet} not published: {Error}", id, e.Message);
            return false;
        }
    }

    private Task Set(string key, byte[] value) =>
        _retry.ExecuteAsync(static async (s, _) => await s.Database.StringSetAsync(s.Key, s.Value).ConfigureAwait(false),
            (Database: _database, Key: (RedisKey)key, Value: (RedisValue)value)).AsTask();

    /// <summary>Records that the serving engine's packet <paramref name="name"/> is <paramref name="document"/>, so other nodes can resolve the name.</summary>
    public async Task<bool> PublishDocumentAsync(string name, ReadOnlyMemory<int> document)
    {
        if (!IsConnected) { Interlocked.Increment(ref _unavailable); return false; }
        byte[] value = MemoryMarshal.AsBytes(document.Span).ToArray();
        try
        {
            await Set(DocumentKey(name), value).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is RedisException or TimeoutException)
        {
            Interlocked.Increment(ref _errors);
            _logger.LogError("shared tier: packet name {Name} not published: {Error}", name, e.Message);
            return false;
        }
    }

    /// <summary>The document another node published under <paramref name="name"/>, or null (the caller checks it hashes to the name).</summary>
    public async Task<int[]?> TryGetDocumentAsync(string name)
    {
        if (!IsConnected) { Interlocked.Increment(ref _unavailable); return null; }
        try
        {
            byte[]? value = await _retry.ExecuteAsync(static async (s, _) => (byte[]?)await s.Database.StringGetAsync(s.Key).ConfigureAwait(false),
                (Database: _database, Key: (RedisKey)DocumentKey(name))).ConfigureAwait(false);
            if (value is null) return null;
            if (value.Length % sizeof(int) != 0)
                throw new CorruptRecordException($"the document under key {DocumentKey(name)} is {value.Length} bytes, not whole token ids.");
            return MemoryMarshal.Cast<byte, int>(value).ToArray();
        }
        catch (Exception e) when (e is PacketStoreException or RedisException or TimeoutException)
        {
            Interlocked.Increment(ref _errors);
            _logger.LogError("shared tier: packet name {Name} not resolved: {Error}", name, e.Message);
            return null;
        }
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose() => _connection.Dispose();
}
