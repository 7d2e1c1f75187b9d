using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;

namespace KvPacket.Benchmarks;

/// <summary>
/// Decode's GEMV where the weights come from DRAM: the Qwen2.5-0.5B classifier ([151936, 896], 136–272 MB, many times
/// the L3), one token. <see cref="MatMulBenchmarks"/>' matrix fits in L3, so it measures the kernel; this one measures
/// how close the kernel's stream comes to the machine's read bandwidth: GB/s = the matrix's bytes / the mean.
/// </summary>
[MemoryDiagnoser]
public unsafe class StreamedGemvBenchmarks
{
    private const int Rows = 151936, Columns = 896;
    private NativeBuffer<byte> _weights = null!;
    private NativeBuffer<float> _x = null!, _y = null!;
    private MatMul _matMul = null!;
    private WeightTensor _tensor;

    /// <summary>Weight element type.</summary>
    [Params(DType.BF16, DType.F16, DType.Q8_0x8, DType.Q4_0x8)]
    public DType Type { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new SeededRandom(7);
        (_weights, _tensor) = MatMulBenchmarks.Weights(Type, Rows, Columns, ref random);
        _x = new NativeBuffer<float>(Columns);
        for (int i = 0; i < Columns; i++) _x.Pointer[i] = random.NextSingle() - 0.5f;
        _y = new NativeBuffer<float>(Rows);
        _matMul = new MatMul(WorkerPool.Shared, Columns);
    }

    [Benchmark]
    public void Multiply() => _matMul.Multiply(_x.Pointer, 1, _tensor, _y.Pointer);

    [GlobalCleanup]
    public void Cleanup()
    {
        _matMul.Dispose();
        _weights.Dispose();
        _x.Dispose();
        _y.Dispose();
    }
}
