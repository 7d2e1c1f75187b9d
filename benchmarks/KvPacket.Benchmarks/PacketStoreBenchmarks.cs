using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Store;

namespace KvPacket.Benchmarks;

/// <summary>
/// Loading one 512-token packet of the Qwen2.5-0.5B KV shape (24 layers, 2 KV heads, head dim 64, f16: 6.3 MB) from a
/// packet store in the OS page cache into KV blocks, checksums checked. MemoryDiagnoser shows the managed bytes per load.
/// </summary>
[MemoryDiagnoser]
public class PacketStoreBenchmarks
{
    private const int Tokens = 512;
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"kvpacket-bdn-store-{Environment.ProcessId}");
    private readonly ModelFingerprint _model = new(42);
    private KvBlockPool _pool = null!;
    private PacketStore _store = null!;
    private PacketId _id;
    private int[] _blocks = null!;

    [GlobalSetup]
    public void Setup()
    {
        var layout = KvCacheLayout.For(ModelCard.Find("qwen2.5-0.5b").Config, DType.F16);
        int count = Tokens / layout.BlockSize;
        _pool = new KvBlockPool(layout, 2 * count);
        _blocks = new int[count];
        for (int b = 0; b < count; b++)
        {
            _blocks[b] = _pool.Allocate();
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(_pool.BlockBytes(_blocks[b]));
            for (int i = 0; i < values.Length; i++) values[i] = (Half)((i % 97) / 97f);
        }
        _store = PacketStore.Open(_directory);
        using (var packet = new Packet(_pool, _blocks, Tokens).Share())
            _id = _store.PutAsync(packet, _model, Enumerable.Range(0, Tokens).ToArray(), AdapterRef.None).AsTask().GetAwaiter().GetResult().Id;
    }

    /// <summary>One packet load.</summary>
    [Benchmark]
    public void Load() => _store.LoadInto(_id, _model, _pool, _blocks);

    [GlobalCleanup]
    public void Cleanup()
    {
        _store.Dispose();
        _pool.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}
