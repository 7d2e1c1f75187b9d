using System.Buffers;
using System.IO.Hashing;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Threading;

namespace KvPacket.Store;

/// <summary>
/// The parallel part of loading one packet: each item reads one stored block from its page record straight into its
/// KV block (or into a staging buffer to decode, for int8 or a different element type) and hashes it while it is
/// still in cache. Reads and hashes of different blocks overlap across the worker threads; the caller then folds the
/// per-block hashes into each page's checksum in order. One instance per calling thread, reused, so a load allocates
/// nothing once the arrays have grown to the largest packet seen.
/// </summary>
internal sealed unsafe class PacketLoad : IParallelWork
{
    [ThreadStatic] private static PacketLoad? _current;

    private SegmentReader _reader = null!;
    private KvBlockPool _pool = null!;
    private KvStorage _storage;
    private bool _direct;
    private int _blockBytes;
    private long[] _addresses = [];
    private int[] _offsets = [];
    private int[] _blocks = [];
    private byte[]?[] _staging = [];

    /// <summary>xxHash3 of each block's stored bytes, in load order.</summary>
    public ulong[] Hashes { get; private set; } = [];

    /// <summary>This thread's instance.</summary>
    public static PacketLoad ForThisThread() => _current ??= new PacketLoad();

    /// <summary>Prepares a load of <paramref name="count"/> blocks of <paramref name="blockBytes"/> stored bytes each.</summary>
    public void Begin(SegmentReader reader, KvBlockPool pool, KvStorage storage, bool direct, int blockBytes, int count, int workers)
    {
        _reader = reader;
        _pool = pool;
        _storage = storage;
        _direct = direct;
        _blockBytes = blockBytes;
        if (_addresses.Length < count)
        {
            _addresses = new long[count];
            _offsets = new int[count];
            _blocks = new int[count];
            Hashes = new ulong[count];
        }
        if (_staging.Length < workers) Array.Resize(ref _staging, workers);
    }

    /// <summary>Item <paramref name="item"/> reads the block at byte <paramref name="offset"/> of the record at <paramref name="address"/> into KV block <paramref name="block"/>.</summary>
    public void Set(int item, long address, int offset, int block)
    {
        _addresses[item] = address;
        _offsets[item] = offset;
        _blocks[item] = block;
    }

    /// <inheritdoc />
    public void Execute(int start, int end, int worker)
    {
        byte[]? staging = null;
        if (!_direct)
        {
            staging = _staging[worker];
            if (staging is null || staging.Length < _blockBytes) _staging[worker] = staging = ArrayPool<byte>.Shared.Rent(_blockBytes);
        }
        fixed (byte* stage = staging)
        {
            for (int i = start; i < end; i++)
            {
                byte* target = _direct ? _pool.Key(_blocks[i], 0) : stage;
                var vector = new SegmentReader.IoVector { Base = target, Length = (nuint)_blockBytes };
                _reader.ReadVectors(_addresses[i], _offsets[i], &vector, 1);
                var stored = new ReadOnlySpan<byte>(target, _blockBytes);
                Hashes[i] = XxHash3.HashToUInt64(stored);
                if (!_direct) KvBlockCodec.Decode(_pool.Layout, stored, _storage, _pool.BlockBytes(_blocks[i]));
            }
        }
    }

    /// <summary>Drops references to the last load's reader and pool.</summary>
    public void End()
    {
        _reader = null!;
        _pool = null!;
    }
}
