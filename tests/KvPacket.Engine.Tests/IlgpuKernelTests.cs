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
    [InlineData(false, 53)]
    [InlineData(true, 53)]
    [InlineData(true, 52)]   // rows 16-byte aligned: four columns per load
    [InlineData(true, 1040)] // long enough for four loads in flight per lane, and a tail
    public void MatMul_into_three_outputs_with_bias_and_accumulation_matches_float64(bool warps, int columns)
    {
        // 37 rows split 20 / 9 / 8 among three outputs (the query, key and value products' shape), added to what they hold.
        const int rows0 = 20, rows1 = 9, rows2 = 8, rows = rows0 + rows1 + rows2, tokens = 5;
        float[] w = Random(rows * columns), x = Random(tokens * columns), bias = Random(rows), y0 = Random(tokens * rows);
        float[][] initial = [y0[..(tokens * rows0)], y0[(tokens * rows0)..(tokens * (rows0 + rows1))], y0[(tokens * (rows0 + rows1))..]];
        using MemoryBuffer1D<float, Stride1D.Dense> wb = On(w), xb = On(x), bb = On(bias), out0 = On(initial[0]), out1 = On(initial[1]), out2 = On(initial[2]);
        if (warps)
            _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, int>(
                IlgpuKernels.MatMulWarp)(Warps(rows * tokens), wb.View, xb.View, bb.View, out0.View, out1.View, out2.View, columns, rows0, rows1, rows2, tokens, 1, 1);
        else
            _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                int, int, int, int, int, int>(IlgpuKernels.MatMul)(new Index2D(rows, tokens), wb.View, xb.View, bb.View, out0.View, out1.View, out2.View, columns, rows0, rows1, rows2, 1, 1);
        int[] counts = [rows0, rows1, rows2];
        for (int segment = 0, first = 0; segment < 3; first += counts[segment], segment++)
        {
            var expected = new double[tokens * counts[segment]];
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < counts[segment]; r++)
                {
                    double sum = bias[first + r];
                    for (int k = 0; k < columns; k++) sum += (double)w[(first + r) * columns + k] * x[t * columns + k];
                    expected[t * counts[segment] + r] = initial[segment][t * counts[segment] + r] + sum;
                }
            Close(expected, (segment switch { 0 => out0, 1 => out1, _ => out2 }).GetAsArray1D(), 1e-5);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Tiled_product_matches_float64_in_every_mode(int mode)
    {
        // 70 tokens × (40 + 30 + 27) rows over 37 columns: partial tiles on both sides and a partial k-slice. Groups of 256
        // threads need the CPU accelerator that emulates an NVIDIA GPU (the default one's groups are 16 threads).
        using var context = Context.Create(builder => builder.CPU(ILGPU.Runtime.CPU.CPUDeviceKind.Nvidia));
        using var accelerator = context.CreateCPUAccelerator(0);
        const int rows0 = 40, rows1 = 30, rows2 = 27, rows = rows0 + rows1 + rows2, tokens = 70, columns = 37;
        float[] w = Random(rows * columns), x = Random(tokens * columns), bias = Random(rows), y = Random(tokens * rows);
        float[][] initial = [y[..(tokens * rows0)], y[(tokens * rows0)..(tokens * (rows0 + rows1))], y[(tokens * (rows0 + rows1))..]];
        MemoryBuffer1D<float, Stride1D.Dense> Upload(float[] values)
        {
            var buffer = accelerator.Allocate1D<float>(values.Length);
            buffer.CopyFromCPU(values);
            return buffer;
        }
        using MemoryBuffer1D<float, Stride1D.Dense> wb = Upload(w), xb = Upload(x), bb = Upload(bias), out0 = Upload(initial[0]), out1 = Upload(initial[1]), out2 = Upload(initial[2]);
        accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, int>(
            IlgpuKernels.MatMulTiled)(new KernelConfig((rows + 63) / 64 * ((tokens + 63) / 64), IlgpuKernels.TileThreads),
            wb.View, xb.View, bb.View, out0.View, out1.View, out2.View, columns, rows0, rows1, rows2, tokens, 1, mode);
        int[] counts = [rows0, rows1, rows2];
        for (int segment = 0, first = 0; segment < 3; first += counts[segment], segment++)
        {
            var expected = new double[tokens * counts[segment]];
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < counts[segment]; r++)
                {
                    double sum = bias[first + r], before = initial[segment][t * counts[segment] + r];
                    for (int k = 0; k < columns; k++) sum += (double)w[(first + r) * columns + k] * x[t * columns + k];
                    expected[t * counts[segment] + r] = mode switch { 0 => sum, 1 => before + sum, _ => before / (1 + Math.Exp(-before)) * sum };
                }
            Close(expected, (segment switch { 0 => out0, 1 => out1, _ => out2 }).GetAsArray1D(), 1e-5);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Gate_up_product_with_swiglu_matches_float64(bool warps)
    {
        // The warp kernel normalises x itself (RMSNorm with the weight folded into gate and up); the thread one takes x̂.
        const int rows = 19, columns = 68, tokens = 3;
        float[] gate = Random(rows * columns), up = Random(rows * columns), x = Random(tokens * columns);
        using MemoryBuffer1D<float, Stride1D.Dense> gb = On(gate), ub = On(up), xb = On(x), yb = _accelerator.Allocate1D<float>(tokens * rows);
        if (warps)
            _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, float>(IlgpuKernels.MatMulSwiGluWarp)(
                Warps(rows * tokens), gb.View, ub.View, xb.View, yb.View, columns, rows, tokens, 1e-5f);
        else
            _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(IlgpuKernels.MatMulSwiGlu)(
                new Index2D(rows, tokens), gb.View, ub.View, xb.View, yb.View, columns, rows);
        var expected = new double[tokens * rows];
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double g = 0, u = 0, scale = warps ? InverseRms(x, t * columns, columns, 1e-5) : 1;
                for (int k = 0; k < columns; k++)
                {
                    g += (double)gate[r * columns + k] * x[t * columns + k] * scale;
                    u += (double)up[r * columns + k] * x[t * columns + k] * scale;
                }
                expected[t * rows + r] = g / (1 + Math.Exp(-g)) * u;
            }
        Close(expected, yb.GetAsArray1D(), 1e-5);
    }

    private static double InverseRms(float[] x, int from, int n, double epsilon)
    {
        double sum = 0;
        for (int j = 0; j < n; j++) sum += (double)x[from + j] * x[from + j];
        return 1 / Math.Sqrt(sum / n + epsilon);
    }

    [Theory]
    [InlineData(0, 68)]   // 17 quads: four in flight per lane (emulated warps of 4), and a tail
    [InlineData(1, 68)]
    [InlineData(0, 45)]   // columns not a multiple of 4: a float per load
    public void Fused_norm_qkv_product_and_kv_append_matches_float64(int interleaved, int columns)
    {
        // Four query heads over two KV heads of width 6, blocks of 4 tokens, the second of two layers; three tokens into
        // slots of blocks 2, 0, 2. The pool starts random: what the kernel must not touch stays as it was.
        var shape = new IlgpuShape(4, 2, 6, 4, 2, interleaved);
        const int layer = 1, blocks = 3, maxPosition = 12;
        int dim = shape.HeadDim, half = dim / 2, queryRows = shape.Heads * dim, kvRows = shape.KvHeads * dim, rows = queryRows + 2 * kvRows;
        int[] blockOf = [2, 0, 2], slotOf = [1, 3, 2], positions = [5, 0, 9];
        int tokens = positions.Length;
        float[] w = Random(rows * columns), x = Random(tokens * columns), bias = Random(rows), cos = Random(maxPosition * half), sin = Random(maxPosition * half);
        float[] pool = Random(blocks * shape.Layers * 2 * shape.BlockSize * shape.KvHeads * dim);
        using MemoryBuffer1D<float, Stride1D.Dense> wb = On(w), xb = On(x), bb = On(bias), qb = _accelerator.Allocate1D<float>(tokens * queryRows), pb = On(pool), cb = On(cos), sb = On(sin);
        using MemoryBuffer1D<int, Stride1D.Dense> blb = On(blockOf), slb = On(slotOf), posb = On(positions);
        _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, IlgpuShape, IlgpuKernels.ProjectionStep>(IlgpuKernels.ProjectQkvWarp)(
            Warps(rows / 2 * tokens), wb.View, xb.View, bb.View, qb.View, pb.View, blb.View, slb.View, posb.View, cb.View, sb.View, shape,
            new IlgpuKernels.ProjectionStep { Layer = layer, Tokens = tokens, Columns = columns, HasBias = 1, Epsilon = 1e-5f });

        var expectedQ = new double[tokens * queryRows];
        var expectedPool = pool.Select(v => (double)v).ToArray();
        for (int t = 0; t < tokens; t++)
        {
            double scale = InverseRms(x, t * columns, columns, 1e-5);
            var y = new double[rows];
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                for (int k = 0; k < columns; k++) sum += (double)w[r * columns + k] * x[t * columns + k] * scale;
                y[r] = sum + bias[r];
            }
            Array.Copy(y, 0, expectedQ, t * queryRows, queryRows);
            for (int head = 0; head < shape.KvHeads; head++)
            {
                long Plane(int value) => ((long)blockOf[t] * shape.Layers * 2 + layer * 2 + value) * shape.BlockSize * shape.KvHeads * dim + ((long)head * shape.BlockSize + slotOf[t]) * dim;
                int key = queryRows + head * dim, value = queryRows + kvRows + head * dim;
                for (int p = 0; p < half; p++)
                {
                    int a = interleaved != 0 ? 2 * p : p, b = interleaved != 0 ? 2 * p + 1 : p + half;
                    double c = cos[positions[t] * half + p], s = sin[positions[t] * half + p];
                    expectedPool[Plane(0) + a] = y[key + a] * c - y[key + b] * s;
                    expectedPool[Plane(0) + b] = y[key + a] * s + y[key + b] * c;
                }
                for (int d = 0; d < dim; d++) expectedPool[Plane(1) + d] = y[value + d];
            }
        }
        Close(expectedQ, qb.GetAsArray1D(), 1e-5);
        Close(expectedPool, pb.GetAsArray1D(), 1e-5);
    }

    private KernelConfig Warps(int count) => IlgpuKernels.WarpGroups(_accelerator, count);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RmsNorm_of_gathered_rows_matches_float64(bool warps)
    {
        const int n = 48, tokens = 6;
        float[] x = Random(tokens * n), weight = Random(n);
        int[] rows = [4, 0, 5];
        using MemoryBuffer1D<float, Stride1D.Dense> xb = On(x), wb = On(weight), ob = _accelerator.Allocate1D<float>(rows.Length * n);
        using var rb = On(rows);
        if (warps)
            // Groups of 16 threads here (4 emulated warps of 4 lanes): several threads per row and a shared-memory sum.
            _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float, int>(IlgpuKernels.RmsNormGroup)(
                new KernelConfig(rows.Length, 4 * _accelerator.WarpSize), xb.View, rb.View, wb.View, ob.View, n, 1e-5f, rows.Length);
        else
            _accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float>(IlgpuKernels.RmsNorm)(
                rows.Length, xb.View, rb.View, wb.View, ob.View, n, 1e-5f);
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
    public void Embedding_with_soft_tokens_matches_the_tables()
    {
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

    [Theory]
    [InlineData(1)]
    [InlineData(3)]   // slices of 13, 13 and 11 logits, merged
    [InlineData(50)]  // more slices than logits: empty ones
    public void ArgMax_takes_each_rows_first_largest_logit(int slices)
    {
        const int vocab = 37, rows = 3;
        float[] logits = Random(rows * vocab);
        logits[5] = logits[30] = 9;                          // a tie across slices: the first wins
        logits[vocab + 36] = 4;                              // the last column
        for (int j = 0; j < vocab; j++) logits[2 * vocab + j] = float.NegativeInfinity;
        using var lb = On(logits);
        using var best = _accelerator.Allocate1D<float>(rows * slices);
        using MemoryBuffer1D<int, Stride1D.Dense> at = _accelerator.Allocate1D<int>(rows * slices), nb = _accelerator.Allocate1D<int>(rows);
        _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(IlgpuKernels.ArgMaxSlices)(
            new KernelConfig(rows * slices, _accelerator.MaxNumThreadsPerGroup), lb.View, best.View, at.View, vocab, slices);
        _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>(IlgpuKernels.ArgMaxMerge)(
            Warps(rows), best.View, at.View, nb.View, slices, rows);
        Assert.Equal([5, 36, 0], nb.GetAsArray1D());
    }

    [Theory]
    [InlineData(false, 0, 8, 1)]
    [InlineData(true, 0, 8, 1)]
    [InlineData(true, 1, 8, 1)]
    // Each row's entries split among warps and merged (3 splits: chunk 1's single entry leaves two splits empty).
    [InlineData(true, 0, 8, 2)]
    [InlineData(true, 1, 8, 3)]
    // Wider than four emulated warps of columns (warp size 4): two passes over the keys; a head dim not a multiple of 4.
    [InlineData(true, 0, 24, 2)]
    [InlineData(true, 0, 6, 1)]
    public void Attention_over_realigned_entries_matches_float64(bool warps, int interleaved, int dim, int splits)
    {
        // Six query heads over two KV heads, blocks of 4 tokens, the second of two layers. Chunk 0: a block at positions
        // 0–3, a packet's 3 tokens placed at 4 (rotation 4: its keys were rotated at 0–2), a block at 7–10, queried by
        // tokens at positions 8 and 10 (8 sees only part of the last block). Chunk 1: one block, queried at position 2.
        var shape = new IlgpuShape(6, 2, dim, 4, 2, interleaved);
        const int layer = 1, maxPosition = 16;
        int half = dim / 2, blocks = 4;
        int[] entries = [2, 0, 4, 0, 0, /**/ 0, 4, 3, 4, 0, /**/ 1, 7, 4, 0, 0, /**/ 3, 0, 3, 0, 0];
        int[] tableStart = [0, 3], tableLength = [3, 1], chunkOf = [0, 0, 1], positions = [8, 10, 2];
        int tokens = positions.Length;
        float[] q = Random(tokens * shape.Heads * dim), pool = Random(blocks * shape.Layers * 2 * shape.BlockSize * shape.KvHeads * dim);
        var cos = new float[maxPosition * half];
        var sin = new float[cos.Length];
        for (int p = 0; p < maxPosition; p++)
            for (int j = 0; j < half; j++)
            {
                double angle = p * Math.Pow(10000, -2.0 * j / dim);
                (cos[p * half + j], sin[p * half + j]) = ((float)Math.Cos(angle), (float)Math.Sin(angle));
            }
        float scale = 1f / MathF.Sqrt(dim);
        using MemoryBuffer1D<float, Stride1D.Dense> qb = On(q), pb = On(pool), cb = On(cos), sb = On(sin),
            rb = _accelerator.Allocate1D<float>(q.Length * splits), ob = _accelerator.Allocate1D<float>(q.Length),
            partial = _accelerator.Allocate1D<float>(tokens * shape.Heads * splits * (dim + 2));
        using MemoryBuffer1D<int, Stride1D.Dense> eb = On(entries), tsb = On(tableStart), tlb = On(tableLength), chb = On(chunkOf), posb = On(positions);
        if (warps)
        {
            _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, IlgpuShape, IlgpuKernels.AttentionStep>(IlgpuKernels.AttentionWarp)(
                Warps(shape.Heads * tokens * splits), qb.View, pb.View, eb.View, tsb.View, tlb.View, chb.View, posb.View, cb.View, sb.View, rb.View, ob.View, partial.View,
                shape, new IlgpuKernels.AttentionStep { Layer = layer, Scale = scale, Tokens = tokens, Splits = splits });
            if (splits > 1)
                _accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int>(IlgpuKernels.AttentionMerge)(
                    Warps(shape.Heads * tokens), partial.View, ob.View, shape.Heads * tokens, dim, splits);
        }
        else
            _accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, IlgpuShape, int, float>(IlgpuKernels.Attention)(
                new Index2D(shape.Heads, tokens), qb.View, pb.View, eb.View, tsb.View, tlb.View, chb.View, posb.View, cb.View, sb.View, rb.View, ob.View, shape, layer, scale);

        long Offset(int block, int value, int head, int slot) =>
            ((long)block * shape.Layers * 2 + layer * 2 + value) * shape.BlockSize * shape.KvHeads * dim + ((long)head * shape.BlockSize + slot) * dim;
        var expected = new double[q.Length];
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < shape.Heads; h++)
            {
                int kvHead = h / (shape.Heads / shape.KvHeads), chunk = chunkOf[t];
                var scores = new List<(double Score, long Value)>();
                for (int e = tableStart[chunk]; e < tableStart[chunk] + tableLength[chunk]; e++)
                {
                    int block = entries[5 * e], firstPosition = entries[5 * e + 1], length = entries[5 * e + 2], rotation = entries[5 * e + 3], slot = entries[5 * e + 4];
                    var rotated = new double[dim];
                    int angles = (positions[t] - rotation) * half;
                    for (int p = 0; p < half; p++)
                    {
                        int a = interleaved != 0 ? 2 * p : p, b = interleaved != 0 ? 2 * p + 1 : p + half;
                        double qa = q[(t * shape.Heads + h) * dim + a], qb2 = q[(t * shape.Heads + h) * dim + b];
                        rotated[a] = qa * cos[angles + p] - qb2 * sin[angles + p];
                        rotated[b] = qa * sin[angles + p] + qb2 * cos[angles + p];
                    }
                    for (int j = 0; j < length && firstPosition + j <= positions[t]; j++)
                    {
                        long key = Offset(block, 0, kvHead, slot + j);
                        double dot = 0;
                        for (int d = 0; d < dim; d++) dot += rotated[d] * pool[key + d];
                        scores.Add((dot * scale, Offset(block, 1, kvHead, slot + j)));
                    }
                }
                double max = scores.Max(s => s.Score), total = scores.Sum(s => Math.Exp(s.Score - max));
                foreach (var (score, value) in scores)
                    for (int d = 0; d < dim; d++) expected[(t * shape.Heads + h) * dim + d] += Math.Exp(score - max) / total * pool[value + d];
            }
        Close(expected, ob.GetAsArray1D(), 1e-5);
    }
}
