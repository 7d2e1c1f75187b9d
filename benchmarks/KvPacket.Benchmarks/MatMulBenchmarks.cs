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
/// block formats in the eight-row interleaved layout a GGUF reader makes of them — and its classifier ([151936, 896])
/// as GEMV: the first fits in L3 and measures the kernel, the second streams from DRAM and measures how close the kernel
/// comes to the machine's read bandwidth. GB/s for GEMV and GFLOP/s for GEMM follow from the reported mean: bytes = the
/// matrix's size in its type, FLOP = 2·tokens·rows·columns.
/// </summary>
[MemoryDiagnoser]
public unsafe class MatMulBenchmarks
{
    private const int Columns = 896;
    private NativeBuffer<byte> _weights = null!;
    private NativeBuffer<float> _x = null!, _y = null!;
    private MatMul _matMul = null!;
    private WeightTensor _tensor;

    /// <summary>Weight element type.</summary>
    [Params(DType.F32, DType.BF16, DType.F16, DType.Q8_0x8, DType.Q4_0x8)]
    public DType Type { get; set; }

    /// <summary>The matrix's rows and the tokens multiplied at once.</summary>
    [ParamsSource(nameof(Cases))]
    public MatMulCase Case { get; set; }

    /// <summary>The up-projection as GEMV and GEMM, the classifier as GEMV.</summary>
    public static IEnumerable<MatMulCase> Cases => [new(4864, 1), new(4864, 64), new(151936, 1)];

    [GlobalSetup]
    public void Setup()
    {
        var random = new SeededRandom(5);
        (_weights, _tensor) = Weights(Type, Case.Rows, Columns, ref random);
        _x = new NativeBuffer<float>((long)Case.Tokens * Columns);
        for (int i = 0; i < _x.Length; i++) _x.Pointer[i] = random.NextSingle() - 0.5f;
        _y = new NativeBuffer<float>((long)Case.Tokens * Case.Rows);
        _matMul = new MatMul(WorkerPool.Shared, Columns);
    }

    /// <summary>Seeded weights in <paramref name="type"/> (block formats interleaved as a GGUF reader lays them out).</summary>
    private static (NativeBuffer<byte> Storage, WeightTensor Tensor) Weights(DType type, int rows, int columns, ref SeededRandom random)
    {
        var weights = new float[(long)rows * columns];
        for (long i = 0; i < weights.Length; i++) weights[i] = random.NextSingle() - 0.5f;
        var file = type switch { DType.Q4_0x8 => DType.Q4_0, DType.Q8_0x8 => DType.Q8_0, _ => type };
        var encoded = new byte[file.BytesFor(weights.Length)];
        TensorEncoding.Encode(weights, file, encoded);
        var storage = new NativeBuffer<byte>(type.BytesFor(weights.Length));
        fixed (byte* source = encoded)
        {
            if (file == type) new ReadOnlySpan<byte>(source, encoded.Length).CopyTo(new Span<byte>(storage.Pointer, encoded.Length));
            else InterleavedRows.Interleave(file, source, rows, columns, storage.Pointer);
        }
        return (storage, new WeightTensor("weights", type, rows, columns, storage.Pointer));
    }

    [Benchmark]
    public void Multiply() => _matMul.Multiply(_x.Pointer, Case.Tokens, _tensor, _y.Pointer);

    [GlobalCleanup]
    public void Cleanup()
    {
        _matMul.Dispose();
        _weights.Dispose();
        _x.Dispose();
        _y.Dispose();
    }
}

/// <summary>A matrix of <paramref name="Rows"/> × 896 times <paramref name="Tokens"/> tokens.</summary>
public readonly record struct MatMulCase(int Rows, int Tokens)
{
    /// <inheritdoc />
    public override string ToString() => $"{Rows}x896 x{Tokens}";
}
