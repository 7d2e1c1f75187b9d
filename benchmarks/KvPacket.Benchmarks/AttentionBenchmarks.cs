using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Numerics;

namespace KvPacket.Benchmarks;

/// <summary>One decode token's paged GQA attention (Qwen2.5-0.5B heads: 14 query, 2 KV, head dim 64) over a context.</summary>
[MemoryDiagnoser]
public unsafe class AttentionBenchmarks
{
    private const int Heads = 14, KvHeads = 2, HeadDim = 64;
    private KvBlockPool _pool = null!;
    private PagedAttention _attention = null!;
    private AttentionBatch _batch = null!;
    private NativeBuffer<float> _q = null!, _out = null!, _angles = null!;

    /// <summary>Tokens already in the cache.</summary>
    [Params(512, 4096)]
    public int Context { get; set; }

    /// <summary>KV element type.</summary>
    [Params(DType.F16, DType.F32)]
    public DType KvType { get; set; }

    /// <summary>Inner loops generated for the qwen2.5-0.5b card (head dim 64), or the generic ones.</summary>
    [Params(false, true)]
    public bool Specialised { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var layout = new KvCacheLayout(1, KvHeads, HeadDim, KvCacheLayout.DefaultBlockSize, KvType);
        int blocks = Context / layout.BlockSize + 1;
        _pool = new KvBlockPool(layout, blocks);
        var table = new int[blocks];
        for (int i = 0; i < blocks; i++) table[i] = _pool.Allocate();
        var random = new SeededRandom(9);
        foreach (int block in table)
        {
            var bytes = _pool.BlockBytes(block);
            for (int i = 0; i < bytes.Length; i += 2) bytes[i + 1] = (byte)(0x30 + random.NextUInt64() % 8); // small finite values either way
        }
        var config = new KvPacket.Core.Model.ModelConfig
        {
            HiddenSize = Heads * HeadDim, IntermediateSize = 1, LayerCount = 1, HeadCount = Heads, KvHeadCount = KvHeads, HeadDim = HeadDim,
            VocabSize = 1, MaxContextLength = Context + 1, RopeTheta = 1e6,
        };
        var kernels = Specialised ? KvPacket.Compute.Specialised.ModelSpec.All.Single(s => s.Name == "qwen2.5-0.5b").HeadKernels : null;
        _attention = new PagedAttention(_pool, WorkerPool.Shared, new RotaryEmbedding(config), Heads, Context + 1, maxTokens: 1, kernels);
        _batch = new AttentionBatch(1, 1) { TokenCount = 1 };
        _batch.Positions[0] = Context;
        _batch.Tables[0] = table.Select((block, i) => new KvBlockEntry(block, i * layout.BlockSize, layout.BlockSize, 0, ReadOnly: false)).ToArray();
        _batch.TableLengths[0] = blocks;
        _q = new NativeBuffer<float>(Heads * HeadDim);
        _out = new NativeBuffer<float>(Heads * HeadDim);
        _angles = new NativeBuffer<float>(HeadDim);
        new RotaryEmbedding(config).Angles(Context, _angles.Slice(0, HeadDim / 2), _angles.Slice(HeadDim / 2, HeadDim / 2));
        for (int i = 0; i < _q.Length; i++) _q.Pointer[i] = random.NextSingle() - 0.5f;
    }

    [Benchmark]
    public void Attend() => _attention.Attend(0, _batch, _q.Pointer, _out.Pointer, _angles.Pointer, _angles.Pointer + HeadDim / 2);

    [GlobalCleanup]
    public void Cleanup()
    {
        _attention.Dispose();
        _pool.Dispose();
        _q.Dispose();
        _out.Dispose();
        _angles.Dispose();
    }
}
