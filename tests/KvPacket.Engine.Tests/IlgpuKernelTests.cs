using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using KvPacket.Compute.Ilgpu;
using KvPacket.Core.Numerics;
using Xunit;

namespace KvPacket.Tests;

/// <summary>Each ILGPU kernel on fresh random inputs against a float64 reference, on ILGPU's CPU accelerator.</summary>
public sealed class IlgpuKernelTests : IDisposable
{
    private readonly Context _context = Context.Create(builder => builder.CPU());
    private readonly CPUAccelerator _accelerator;
    private SeededRandom _random = new(911);

    public IlgpuKernelTests() => _accelerator = _context.CreateCPUAccelerator(0);

    public void Dispose()
    {
        _accelerator.Dispose();
        _context.Dispose();
    }

    private float[] Random(int count) => [.. Enumerable.Range(0, count).Select(_ => _random.NextSingle() * 2 - 1)];

    private MemoryBuffer1D<T, Stride1D.Dense> On<T>(T[] values) where T : unmanaged
    {
        var buffer = _accelerator.Allocate1D<T>(values.Length);
        buffer.CopyFromCPU(values);
        return buffer;
    }

    private static void Close(double[] expected, float[] actual, double tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance * (1 + Math.Abs(expected[i])), $"element {i}: {actual[i]} vs {expected[i]}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MatMul_with_bias_and_accumulation_matches_float64(bool warps)
    {
        const int rows = 37, columns = 53, tokens = 5;
        float[] w = Random(rows * columns), x = Random(tokens * columns), bias = Random(rows), y0 = Random(tokens * rows);
        using MemoryBuffer1D<float, Stride1D.Dense> wb = On(w), xb = On(x), bb = On(bias), yb = On(y0);
        if (warps)
            // One warp per (row, token), the last group only partly used.
            _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(IlgpuKernels.MatMulWarp)(
                new KernelConfig((rows * tokens + IlgpuKernels.WarpsPerGroup - 1) / IlgpuKernels.WarpsPerGroup, IlgpuKernels.WarpsPerGroup * _accelerator.WarpSize),
                wb.View, xb.View, bb.View, yb.View, columns, rows, tokens, 1, 1);
        else
            _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(IlgpuKernels.MatMul)(
                new Index2D(rows, tokens), wb.View, xb.View, bb.View, yb.View, columns, rows, 1, 1);
        var expected = new double[tokens * rows];
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double sum = bias[r];
                for (int k = 0; k < columns; k++) sum += (double)w[r * columns + k] * x[t * columns + k];
                expected[t * rows + r] = y0[t * rows + r] + sum;
            }
        Close(expected, yb.GetAsArray1D(), 1e-5);
    }

    [Fact]
    public void RmsNorm_of_gathered_rows_matches_float64()
    {
        const int n = 48, tokens = 6;
        float[] x = Random(tokens * n), weight = Random(n);
        int[] rows = [4, 0, 5];
        using MemoryBuffer1D<float, Stride1D.Dense> xb = On(x), wb = On(weight), ob = _accelerator.Allocate1D<float>(rows.Length * n);
        using var rb = On(rows);
        var kernel = _accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float>(IlgpuKernels.RmsNorm);
        kernel(rows.Length, xb.View, rb.View, wb.View, ob.View, n, 1e-5f);
        var expected = new double[rows.Length * n];
        for (int r = 0; r < rows.Length; r++)
        {
            double sum = 0;
            for (int j = 0; j < n; j++) sum += (double)x[rows[r] * n + j] * x[rows[r] * n + j];
            double scale = 1 / Math.Sqrt(sum / n + 1e-5);
            for (int j = 0; j < n; j++) expected[r * n + j] = x[rows[r] * n + j] * scale * weight[j];
        }
        Close(expected, ob.GetAsArray1D(), 1e-5);
    }

    [Fact]
    public void SwiGlu_and_embedding_with_soft_tokens_match_float64()
    {
        float[] gate = Random(200), up = Random(200);
        using MemoryBuffer1D<float, Stride1D.Dense> gb = On(gate), ub = On(up);
        _accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(IlgpuKernels.SwiGlu)(gate.Length, gb.View, ub.View);
        Close([.. gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i])], gb.GetAsArray1D(), 1e-6);

        const int hidden = 8;
        float[] table = Random(10 * hidden), soft = Random(2 * hidden);
        int[] ids = [3, -2, 9, -1];
        using MemoryBuffer1D<float, Stride1D.Dense> tb = On(table), sb = On(soft), xb = _accelerator.Allocate1D<float>(ids.Length * hidden);
        using var ib = On(ids);
        _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(IlgpuKernels.Embed)(
            new Index2D(hidden, ids.Length), ib.View, tb.View, sb.View, xb.View, hidden);
        var expected = ids.SelectMany(id => id >= 0 ? table.Skip(id * hidden).Take(hidden) : soft.Skip((-1 - id) * hidden).Take(hidden)).Select(v => (double)v).ToArray();
        Close(expected, xb.GetAsArray1D(), 0);
    }
}
