using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;

namespace KvPacket.Benchmarks;

/// <summary>
/// The Qwen2.5-0.5B MLP up-projection ([4864, 896]) as GEMV (decode) and GEMM (prefill chunk), per weight type — the
/// block formats in the eight-row interleaved layout a GGUF reader makes of them. GB/s for GEMV and GFLOP/s for GEMM
/// follow from the reported mean: bytes = the matrix's size in its type, FLOP = 2·tokens·rows·columns.
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
    [Params(DType.F32, DType.BF16, DType.F16, DType.Q8_0x8, DType.Q4_0x8)]
    public DType Type { get; set; }

    /// <summary>Tokens multiplied at once.</summary>
    [Params(1, 64)]
    public int Tokens { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new SeededRandom(5);
        var weights = new float[Rows * Columns];
        for (int i = 0; i < weights.Length; i++) weights[i] = random.NextSingle() - 0.5f;
        var file = Type switch { DType.Q4_0x8 => DType.Q4_0, DType.Q8_0x8 => DType.Q8_0, _ => Type };
        var encoded = new byte[file.BytesFor(weights.Length)];
        TensorEncoding.Encode(weights, file, encoded);
        _weights = new NativeBuffer<byte>(Type.BytesFor(weights.Length));
        fixed (byte* source = encoded)
        {
            if (file == Type) new ReadOnlySpan<byte>(source, encoded.Length).CopyTo(new Span<byte>(_weights.Pointer, encoded.Length));
            else InterleavedRows.Interleave(file, source, Rows, Columns, _weights.Pointer);
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
