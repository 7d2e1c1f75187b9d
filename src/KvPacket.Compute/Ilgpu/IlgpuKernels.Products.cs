using ILGPU;

namespace KvPacket.Compute.Ilgpu;

/// <summary>The products: a thread per output (CPU accelerator), a warp per output row, and shared-memory tiles for many tokens.</summary>
public static partial class IlgpuKernels
{
    /// <summary>
    /// y[t, r] = Σ_k w[r, k] x[t, k] (+ bias[r] when <paramref name="hasBias"/>; added to y when <paramref name="accumulate"/>),
    /// the rows of w written to up to three outputs in turn (<paramref name="rows0"/> rows to y0, then rows1 to y1, then
    /// rows2 to y2: the query, key and value products as one launch), one thread per output: for ILGPU's CPU accelerator,
    /// where <see cref="MatMulWarp"/>'s emulated shuffles cost ~20×. Index: (r, t).
    /// </summary>
    public static void MatMul(Index2D i, ArrayView<float> w, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2,
        int columns, int rows0, int rows1, int rows2, int hasBias, int accumulate)
    {
        long wRow = (long)i.X * columns, xRow = (long)i.Y * columns;
        float sum = 0;
        for (int k = 0; k < columns; k++) sum += w[wRow + k] * x[xRow + k];
        Store(y0, y1, y2, rows0, rows1, rows2, i.X, i.Y, hasBias != 0 ? sum + bias[i.X] : sum, accumulate);
    }

    /// <summary>
    /// <see cref="MatMul"/> for a GPU, one warp per (row, token): the lanes stream the row (<see cref="WarpDot"/>) and add
    /// their sums by shuffles. Launch with <see cref="WarpsPerGroup"/> warps per group, (rows0 + rows1 + rows2) × tokens warps.
    /// </summary>
    public static void MatMulWarp(ArrayView<float> w, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2,
        int columns, int rows0, int rows1, int rows2, int tokens, int hasBias, int accumulate)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize, rows = rows0 + rows1 + rows2;
        // Every lane reaches the shuffles (an emulated warp waits for all of its lanes), the last group's spare warps idle.
        bool used = warp < rows * tokens;
        int r = used ? warp % rows : 0, t = used ? warp / rows : 0;
        float sum = WarpSum(WarpDot(w, x, (long)r * columns, (long)t * columns, columns, used));
        if (used && Warp.LaneIdx == 0) Store(y0, y1, y2, rows0, rows1, rows2, r, t, hasBias != 0 ? sum + bias[r] : sum, accumulate);
    }

    /// <summary>
    /// y[t, r] = silu(Σ_k gate[r, k] x[t, k]) · Σ_k up[r, k] x[t, k]: SwiGLU's two products and their product in one
    /// launch, one thread per output (the CPU accelerator's). Index: (r, t).
    /// </summary>
    public static void MatMulSwiGlu(Index2D i, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> x, ArrayView<float> y, int columns, int rows)
    {
        long wRow = (long)i.X * columns, xRow = (long)i.Y * columns;
        float g = 0, u = 0;
        for (int k = 0; k < columns; k++)
        {
            g += gate[wRow + k] * x[xRow + k];
            u += up[wRow + k] * x[xRow + k];
        }
        y[(long)i.Y * rows + i.X] = g / (1f + MathF.Exp(-g)) * u;
    }

    /// <summary>
    /// <see cref="MatMulSwiGlu"/> for a GPU over x̂ = x / rms(x) (the FFN norm's weight folded into gate and up), one warp
    /// per (row, token) reading both rows and the raw residual row once: the norm is no launch of its own. Launch as
    /// <see cref="MatMulWarp"/>.
    /// </summary>
    public static void MatMulSwiGluWarp(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> x, ArrayView<float> y, int columns, int rows, int tokens, float epsilon)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize;
        bool used = warp < rows * tokens;
        int r = used ? warp % rows : 0, t = used ? warp / rows : 0;
        long wRow = (long)r * columns;
        Float4 dots = WarpDots(gate, wRow, up, wRow, x, (long)t * columns, columns, used);
        float scale = InverseRms(WarpSum(dots.Z), columns, epsilon), g = WarpSum(dots.X) * scale, u = WarpSum(dots.Y) * scale;
        if (used && Warp.LaneIdx == 0) y[(long)t * rows + r] = g / (1f + MathF.Exp(-g)) * u;
    }

    /// <summary>1 / √(Σx² / n + ε): the scale of RMSNorm.</summary>
    private static float InverseRms(float squares, int n, float epsilon) => 1f / MathF.Sqrt(squares / n + epsilon);

    /// <summary>
    /// Row r, token t's value into whichever output its row falls in: written (<paramref name="mode"/> 0), added (1), or
    /// multiplied into silu of what is there (2: SwiGLU's up product over its gate product).
    /// </summary>
    private static void Store(ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2, int rows0, int rows1, int rows2, int r, int t, float value, int mode)
    {
        if (r < rows0) Combine(y0, (long)t * rows0 + r, value, mode);
        else if (r < rows0 + rows1) Combine(y1, (long)t * rows1 + r - rows0, value, mode);
        else Combine(y2, (long)t * rows2 + r - rows0 - rows1, value, mode);
    }

    private static void Combine(ArrayView<float> y, long o, float value, int mode)
    {
        if (mode == 0) y[o] = value;
        else if (mode == 1) y[o] += value;
        else
        {
            float gate = y[o];
            y[o] = gate / (1f + MathF.Exp(-gate)) * value;
        }
    }

    /// <summary>
    /// <see cref="MatMulWarp"/> for many tokens (prefill), tiled so each weight is read once per 64 tokens instead of once
    /// per token: a group of 256 threads computes a 64-token × 64-row tile, 4 × 4 outputs per thread, over k-slices of
    /// 16 staged in shared memory. <paramref name="mode"/>: 0 write, 1 add, 2 silu(y) × product (see <see cref="Store"/>).
    /// Launch ⌈rows / 64⌉ × ⌈tokens / 64⌉ groups of <see cref="TileThreads"/>.
    /// </summary>
    public static void MatMulTiled(ArrayView<float> w, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2,
        int columns, int rows0, int rows1, int rows2, int tokens, int hasBias, int mode)
    {
        const int Tile = 64, Slice = 16;
        var xs = SharedMemory.Allocate<float>(Tile * Slice);
        var ws = SharedMemory.Allocate<float>(Tile * Slice);
        int rows = rows0 + rows1 + rows2, rowTiles = (rows + Tile - 1) / Tile;
        int r0 = Grid.IdxX % rowTiles * Tile, t0 = Grid.IdxX / rowTiles * Tile, thread = Group.IdxX, tx = thread % 16, ty = thread / 16;
        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0, c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
        for (int k0 = 0; k0 < columns; k0 += Slice)
        {
            // Each thread stages four elements of each operand: element e is (e / 16 along the tile, e % 16 along k).
            for (int i = 0; i < 4; i++)
            {
                int e = thread + TileThreads * i, along = e / Slice, k = k0 + e % Slice;
                xs[e % Slice * Tile + along] = t0 + along < tokens && k < columns ? x[(long)(t0 + along) * columns + k] : 0;
                ws[e % Slice * Tile + along] = r0 + along < rows && k < columns ? w[(long)(r0 + along) * columns + k] : 0;
            }
            Group.Barrier();
            for (int kk = 0; kk < Slice; kk++)
            {
                int a = kk * Tile + ty * 4, b = kk * Tile + tx * 4;
                float a0 = xs[a], a1 = xs[a + 1], a2 = xs[a + 2], a3 = xs[a + 3], b0 = ws[b], b1 = ws[b + 1], b2 = ws[b + 2], b3 = ws[b + 3];
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }
            Group.Barrier();
        }
        int t = t0 + ty * 4, r = r0 + tx * 4;
        StoreTileRow(y0, y1, y2, bias, rows0, rows1, rows2, rows, tokens, t, r, c00, c01, c02, c03, hasBias, mode);
        StoreTileRow(y0, y1, y2, bias, rows0, rows1, rows2, rows, tokens, t + 1, r, c10, c11, c12, c13, hasBias, mode);
        StoreTileRow(y0, y1, y2, bias, rows0, rows1, rows2, rows, tokens, t + 2, r, c20, c21, c22, c23, hasBias, mode);
        StoreTileRow(y0, y1, y2, bias, rows0, rows1, rows2, rows, tokens, t + 3, r, c30, c31, c32, c33, hasBias, mode);
    }

    /// <summary>Threads per group of <see cref="MatMulTiled"/>.</summary>
    public const int TileThreads = 256;

    private static void StoreTileRow(ArrayView<float> y0, ArrayView<float> y1, ArrayView<float> y2, ArrayView<float> bias, int rows0, int rows1, int rows2, int rows,
        int tokens, int t, int r, float v0, float v1, float v2, float v3, int hasBias, int mode)
    {
        if (t >= tokens) return;
        if (r < rows) Store(y0, y1, y2, rows0, rows1, rows2, r, t, hasBias != 0 ? v0 + bias[r] : v0, mode);
        if (r + 1 < rows) Store(y0, y1, y2, rows0, rows1, rows2, r + 1, t, hasBias != 0 ? v1 + bias[r + 1] : v1, mode);
        if (r + 2 < rows) Store(y0, y1, y2, rows0, rows1, rows2, r + 2, t, hasBias != 0 ? v2 + bias[r + 2] : v2, mode);
        if (r + 3 < rows) Store(y0, y1, y2, rows0, rows1, rows2, r + 3, t, hasBias != 0 ? v3 + bias[r + 3] : v3, mode);
    }

    /// <summary>
    /// This lane's share of Σ_k w[wRow + k] x[xRow + k]: four consecutive columns per load (one 16-byte load where the
    /// backend vectorises it), four loads in flight (a dependent chain of single loads leaves the memory system idle;
    /// eight measured slower on the H200), so a warp streams 2 KB of the row per iteration; rows whose width is not a
    /// multiple of 4 are read a float at a time.
    /// </summary>
    private static float WarpDot(ArrayView<float> w, ArrayView<float> x, long wRow, long xRow, int columns, bool used)
    {
        int lane = Warp.LaneIdx, width = Warp.WarpSize;
        if (columns % 4 != 0)
        {
            float single = 0;
            for (int k = lane; used && k < columns; k += width) single += w[wRow + k] * x[xRow + k];
            return single;
        }
        int quads = columns / 4, q = lane;
        var w4 = w.Cast<Float4>();
        var x4 = x.Cast<Float4>();
        long w0 = wRow / 4, x0 = xRow / 4;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (; used && q + 3 * width < quads; q += 4 * width)
        {
            Float4 a0 = w4[w0 + q], a1 = w4[w0 + q + width], a2 = w4[w0 + q + 2 * width], a3 = w4[w0 + q + 3 * width];
            Float4 b0 = x4[x0 + q], b1 = x4[x0 + q + width], b2 = x4[x0 + q + 2 * width], b3 = x4[x0 + q + 3 * width];
            s0 += a0.X * b0.X + a0.Y * b0.Y + a0.Z * b0.Z + a0.W * b0.W;
            s1 += a1.X * b1.X + a1.Y * b1.Y + a1.Z * b1.Z + a1.W * b1.W;
            s2 += a2.X * b2.X + a2.Y * b2.Y + a2.Z * b2.Z + a2.W * b2.W;
            s3 += a3.X * b3.X + a3.Y * b3.Y + a3.Z * b3.Z + a3.W * b3.W;
        }
        for (; used && q < quads; q += width)
        {
            Float4 a = w4[w0 + q], b = x4[x0 + q];
            s0 += a.X * b.X + a.Y * b.Y + a.Z * b.Z + a.W * b.W;
        }
        return (s0 + s1) + (s2 + s3);
    }

    /// <summary>
    /// This lane's shares of two dot products with the same x row and of Σx² (X: a · x, Y: b · x, Z: x · x) — the loads
    /// of <see cref="WarpDot"/>, with x read once for both rows and its squares summed on the way, so a product can
    /// normalise its input itself.
    /// </summary>
    private static Float4 WarpDots(ArrayView<float> a, long aRow, ArrayView<float> b, long bRow, ArrayView<float> x, long xRow, int columns, bool used)
    {
        int lane = Warp.LaneIdx, width = Warp.WarpSize;
        float sa = 0, sb = 0, sx = 0;
        if (columns % 4 != 0)
        {
            for (int k = lane; used && k < columns; k += width)
            {
                float v = x[xRow + k];
                sa += a[aRow + k] * v;
                sb += b[bRow + k] * v;
                sx += v * v;
            }
            return new Float4 { X = sa, Y = sb, Z = sx };
        }
        int quads = columns / 4, q = lane;
        var a4 = a.Cast<Float4>();
        var b4 = b.Cast<Float4>();
        var x4 = x.Cast<Float4>();
        long a0 = aRow / 4, b0 = bRow / 4, x0 = xRow / 4;
        float sa1 = 0, sb1 = 0, sx1 = 0;
        // Four quads of each row in flight per lane: eight weight loads, as in WarpDot.
        for (; used && q + 3 * width < quads; q += 4 * width)
        {
            Float4 p0 = a4[a0 + q], p1 = a4[a0 + q + width], p2 = a4[a0 + q + 2 * width], p3 = a4[a0 + q + 3 * width];
            Float4 r0 = b4[b0 + q], r1 = b4[b0 + q + width], r2 = b4[b0 + q + 2 * width], r3 = b4[b0 + q + 3 * width];
            Float4 v0 = x4[x0 + q], v1 = x4[x0 + q + width], v2 = x4[x0 + q + 2 * width], v3 = x4[x0 + q + 3 * width];
            sa += p0.X * v0.X + p0.Y * v0.Y + p0.Z * v0.Z + p0.W * v0.W + p2.X * v2.X + p2.Y * v2.Y + p2.Z * v2.Z + p2.W * v2.W;
            sa1 += p1.X * v1.X + p1.Y * v1.Y + p1.Z * v1.Z + p1.W * v1.W + p3.X * v3.X + p3.Y * v3.Y + p3.Z * v3.Z + p3.W * v3.W;
            sb += r0.X * v0.X + r0.Y * v0.Y + r0.Z * v0.Z + r0.W * v0.W + r2.X * v2.X + r2.Y * v2.Y + r2.Z * v2.Z + r2.W * v2.W;
            sb1 += r1.X * v1.X + r1.Y * v1.Y + r1.Z * v1.Z + r1.W * v1.W + r3.X * v3.X + r3.Y * v3.Y + r3.Z * v3.Z + r3.W * v3.W;
            sx += v0.X * v0.X + v0.Y * v0.Y + v0.Z * v0.Z + v0.W * v0.W + v2.X * v2.X + v2.Y * v2.Y + v2.Z * v2.Z + v2.W * v2.W;
            sx1 += v1.X * v1.X + v1.Y * v1.Y + v1.Z * v1.Z + v1.W * v1.W + v3.X * v3.X + v3.Y * v3.Y + v3.Z * v3.Z + v3.W * v3.W;
        }
        for (; used && q < quads; q += width)
        {
            Float4 p = a4[a0 + q], r = b4[b0 + q], v = x4[x0 + q];
            sa += p.X * v.X + p.Y * v.Y + p.Z * v.Z + p.W * v.W;
            sb += r.X * v.X + r.Y * v.Y + r.Z * v.Z + r.W * v.W;
            sx += v.X * v.X + v.Y * v.Y + v.Z * v.Z + v.W * v.W;
        }
        return new Float4 { X = sa + sa1, Y = sb + sb1, Z = sx + sx1 };
    }
}
