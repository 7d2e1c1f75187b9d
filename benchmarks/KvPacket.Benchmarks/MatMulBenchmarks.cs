using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;

namespace KvPacket.Benchmarks;

/// <summary>
/// The Qwen2.5-0.5B MLP up-projection ([4864, 896]) as GEMV (decode) and GEMM (prefill chunk), per weight type.
/// GB/s for GEMV and GFLOP/s for GEMM follow from the reported mean: bytes = rows·columns·sizeof(type), FLOP = 2·tokens·rows·columns.
/// </summary>
[MemoryDiagnoser]
public unsafe class MatMulBenchmarks
{
    private const int Rows = 4864, Columns = 896;
    private NativeBuffer<byte> _weights = null!;
    private NativeBuffer<float> _x = null!, _y = null!;
    private MatMul _matMul = null!;
    private WeightTensor _tensor;

    /// <summary>Weight element type.</summary>
    [Params(DType.F32, DType.BF16, DType.F16)]
    public DType Type { get; set; }

    /// <summary>Tokens multiplied at once.</summary>
    [Params(1, 64)]
    public int Tokens { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new SeededRandom(5);
        var row = new float[Columns];
        long rowBytes = Type.BytesFor(Columns);
        _weights = new NativeBuffer<byte>(rowBytes * Rows);
        for (int r = 0; r < Rows; r++)
        {
            for (int c = 0; c < Columns; c++) row[c] = random.NextSingle() - 0.5f;
            TensorEncoding.Encode(row, Type, _weights.Slice(r * rowBytes, (int)rowBytes));
        }
        _x = new NativeBuffer<float>((long)Tokens * Columns);
        for (int i = 0; i < _x.Length; i++) _x.Pointer[i] = random.NextSingle() - 0.5f;
        _y = new NativeBuffer<float>((long)Tokens * Rows);
        _tensor = new WeightTensor("up_proj", Type, Rows, Columns, _weights.Pointer);
        _matMul = new MatMul(WorkerPool.Shared, Columns);
    }

    [Benchmark]
    public void Multiply() => _matMul.Multiply(_x.Pointer, Tokens, _tensor, _y.Pointer);

    [GlobalCleanup]
    public void Cleanup()
    {
        _matMul.Dispose();
        _weights.Dispose();
        _x.Dispose();
        _y.Dispose();
    }
}
