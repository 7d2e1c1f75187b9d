using ILGPU;

namespace KvPacket.Compute.Ilgpu;

/// <summary>
/// The attention shape the K/V and attention kernels read: a model card's constants (a struct the source generator
/// writes per card, whose properties return literals, so ILGPU compiles the kernels with them as constants), or the
/// run-time <see cref="IlgpuShape"/> for a model without a card. The KV pool is laid out as
/// <see cref="Kv.KvCacheLayout"/> says (per block, per layer, K then V planes of [KV heads][block tokens][head dim]), in f32.
/// </summary>
public interface IIlgpuShape
{
    /// <summary>Query heads.</summary>
    int Heads { get; }
    /// <summary>Key/value heads.</summary>
    int KvHeads { get; }
    /// <summary>Width of one head.</summary>
    int HeadDim { get; }
    /// <summary>Tokens per KV block.</summary>
    int BlockSize { get; }
    /// <summary>Transformer blocks.</summary>
    int Layers { get; }
    /// <summary>1 for llama2.c's interleaved RoPE pairs, 0 for rotate-half (a property of the checkpoint, not the card).</summary>
    int Interleaved { get; }
}

/// <summary>The attention shape as run-time values, for a model without a card.</summary>
public readonly record struct IlgpuShape(int Heads, int KvHeads, int HeadDim, int BlockSize, int Layers, int Interleaved) : IIlgpuShape;

/// <summary>
/// The forward pass's kernels written once in C# and compiled by ILGPU for whichever accelerator runs them (CUDA, or
/// ILGPU's CPU accelerator in CI). One thread per output element or row, and for the GPU a warp per row of the two
/// kernels that bound a step (products and attention), no shared memory: the contract and the numbers first (checked
/// against float64 and the SIMD CPU backend), speed second. RoPE angles come from a host-built table (cos, sin per
/// position and pair) so every backend rotates by the same floats.
/// </summary>
public static class IlgpuKernels
{
    /// <summary>Where element <paramref name="d"/> of (block, layer, K = 0 or V = 1, kv head, slot) lives in the pool.</summary>
    private static long Offset<TShape>(TShape shape, int block, int layer, int value, int head, int slot, int d) where TShape : struct, IIlgpuShape =>
        ((long)block * shape.Layers * 2 + layer * 2 + value) * shape.BlockSize * shape.KvHeads * shape.HeadDim + ((long)head * shape.BlockSize + slot) * shape.HeadDim + d;

    /// <summary>x[t, c] = embedding[ids[t], c], or soft[−1 − ids[t], c] for a soft token. Index: (c, t).</summary>
    public static void Embed(Index2D i, ArrayView<int> ids, ArrayView<float> embedding, ArrayView<float> soft, ArrayView<float> x, int hidden)
    {
        int id = ids[i.Y];
        x[(long)i.Y * hidden + i.X] = id >= 0 ? embedding[(long)id * hidden + i.X] : soft[(long)(-1 - id) * hidden + i.X];
    }

    /// <summary>output[t] = x[t] / rms(x[t]) ⊙ weight, one row per thread; rows[t] picks x's row (gathering the rows that get logits).</summary>
    public static void RmsNorm(Index1D t, ArrayView<float> x, ArrayView<int> rows, ArrayView<float> weight, ArrayView<float> output, int n, float epsilon)
    {
        long from = (long)rows[t.X] * n, to = (long)t.X * n;
        float sum = 0;
        for (int j = 0; j < n; j++) sum += x[from + j] * x[from + j];
        float scale = 1f / MathF.Sqrt(sum / n + epsilon);
        for (int j = 0; j < n; j++) output[to + j] = x[from + j] * scale * weight[j];
    }

    /// <summary>
    /// <see cref="RmsNorm"/> for a GPU, one group of <see cref="NormThreads"/> threads per row (a decode step has one row,
    /// and one warp walking 2048 floats is a chain of dependent loads): the threads read the row together and add their
    /// squares by shuffles and shared memory. Launch <paramref name="count"/> groups of <see cref="NormThreads"/>.
    /// </summary>
    public static void RmsNormGroup(ArrayView<float> x, ArrayView<int> rows, ArrayView<float> weight, ArrayView<float> output, int n, float epsilon, int count)
    {
        var warpSums = SharedMemory.Allocate<float>(NormThreads);
        int row = Grid.IdxX, thread = Group.IdxX, threads = Group.DimX;
        long from = (long)rows[row] * n, to = (long)row * n;
        float sum = 0;
        bool vectors = n % 4 == 0;   // rows then start 16-byte aligned: a hidden size of 2048 is two loads per thread
        var x4 = x.Cast<Float4>();
        var weight4 = weight.Cast<Float4>();
        var output4 = output.Cast<Float4>();
        if (vectors)
            for (int j = thread; j < n / 4; j += threads)
            {
                Float4 v = x4[from / 4 + j];
                sum += v.X * v.X + v.Y * v.Y + v.Z * v.Z + v.W * v.W;
            }
        else
            for (int j = thread; j < n; j += threads) sum += x[from + j] * x[from + j];
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2) sum += Warp.ShuffleXor(sum, offset);
        if (Warp.LaneIdx == 0) warpSums[Warp.WarpIdx] = sum;
        Group.Barrier();
        float total = 0;
        for (int w = 0; w < threads / Warp.WarpSize; w++) total += warpSums[w];
        float scale = 1f / MathF.Sqrt(total / n + epsilon);
        if (vectors)
            for (int j = thread; j < n / 4; j += threads)
            {
                Float4 v = x4[from / 4 + j], g = weight4[j];
                output4[to / 4 + j] = new Float4 { X = v.X * scale * g.X, Y = v.Y * scale * g.Y, Z = v.Z * scale * g.Z, W = v.W * scale * g.W };
            }
        else
            for (int j = thread; j < n; j += threads) output[to + j] = x[from + j] * scale * weight[j];
    }

    /// <summary>Threads per group of <see cref="RmsNormGroup"/>.</summary>
    public const int NormThreads = 256;

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

    /// <summary><see cref="MatMulSwiGlu"/> for a GPU, one warp per (row, token) reading both rows. Launch as <see cref="MatMulWarp"/>.</summary>
    public static void MatMulSwiGluWarp(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> x, ArrayView<float> y, int columns, int rows, int tokens)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize;
        bool used = warp < rows * tokens;
        int r = used ? warp % rows : 0, t = used ? warp / rows : 0;
        long wRow = (long)r * columns, xRow = (long)t * columns;
        float g = WarpSum(WarpDot(gate, x, wRow, xRow, columns, used)), u = WarpSum(WarpDot(up, x, wRow, xRow, columns, used));
        if (used && Warp.LaneIdx == 0) y[(long)t * rows + r] = g / (1f + MathF.Exp(-g)) * u;
    }

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
    /// backend vectorises it), four loads in flight (a dependent chain of single loads leaves the memory system idle), so
    /// a warp streams 2 KB of the row per iteration; rows whose width is not a multiple of 4 are read a float at a time.
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

    /// <summary>The sum of <paramref name="value"/> over the warp's lanes, in every lane.</summary>
    private static float WarpSum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2) value += Warp.ShuffleXor(value, offset);
        return value;
    }

    /// <summary>The scalar arguments of <see cref="AttentionWarp{TShape}"/>.</summary>
    public struct AttentionStep
    {
        /// <summary>The transformer block.</summary>
        public int Layer;
        /// <summary>Scores are scaled by it (1/√head dim).</summary>
        public float Scale;
        /// <summary>Tokens in the step.</summary>
        public int Tokens;
        /// <summary>Warps each (head, token) row's entries are divided among.</summary>
        public int Splits;
    }

    /// <summary>Four floats read as one 16-byte element.</summary>
    public struct Float4
    {
        /// <summary>Elements 0 to 3.</summary>
        public float X, Y, Z, W;
    }

    /// <summary>Warps per group of the warp-per-row kernels.</summary>
    public const int WarpsPerGroup = 4;

    /// <summary>
    /// Token t's K, rotated at its position, and V into (blocks[t], slots[t]) of <paramref name="layer"/>, one thread per
    /// rotation pair: it rotates pair p of one KV head's key and copies that head's values 2p and 2p + 1. Index: (kv head × head dim / 2 + p, t).
    /// </summary>
    public static void AppendKv<TShape>(Index2D i, ArrayView<float> k, ArrayView<float> v, ArrayView<float> pool, ArrayView<int> blocks, ArrayView<int> slots,
        ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, TShape shape, int layer) where TShape : struct, IIlgpuShape
    {
        int t = i.Y, half = shape.HeadDim / 2, head = i.X / half, p = i.X % half, kvDim = shape.KvHeads * shape.HeadDim;
        long row = (long)t * kvDim + head * shape.HeadDim, angle = (long)positions[t] * half + p;
        int a = shape.Interleaved != 0 ? 2 * p : p, b = shape.Interleaved != 0 ? 2 * p + 1 : p + half;
        float c = cos[angle], s = sin[angle], ka = k[row + a], kb = k[row + b];
        pool[Offset(shape, blocks[t], layer, 0, head, slots[t], a)] = ka * c - kb * s;
        pool[Offset(shape, blocks[t], layer, 0, head, slots[t], b)] = ka * s + kb * c;
        pool[Offset(shape, blocks[t], layer, 1, head, slots[t], 2 * p)] = v[row + 2 * p];
        pool[Offset(shape, blocks[t], layer, 1, head, slots[t], 2 * p + 1)] = v[row + 2 * p + 1];
    }

    /// <summary>
    /// Causal attention of token t's query head over its sequence's block table (entries of five ints, see
    /// <c>BlockEntry</c>): for each entry the query is rotated at its position − the entry's rotation, so a placed
    /// packet's keys (rotated at their local positions) need no rewrite. Online softmax, the running output kept in
    /// <paramref name="output"/>; <paramref name="rotated"/> holds the rotated query. Index: (head, t).
    /// </summary>
    public static void Attention<TShape>(Index2D i, ArrayView<float> q, ArrayView<float> pool, ArrayView<int> entries, ArrayView<int> tableStart, ArrayView<int> tableLength,
        ArrayView<int> tokenChunk, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, ArrayView<float> rotated, ArrayView<float> output,
        TShape shape, int layer, float scale) where TShape : struct, IIlgpuShape
    {
        int t = i.Y, head = i.X, dim = shape.HeadDim, half = dim / 2, kvHead = head / (shape.Heads / shape.KvHeads), position = positions[t];
        long row = ((long)t * shape.Heads + head) * dim;
        for (int d = 0; d < dim; d++) output[row + d] = 0;
        float max = float.NegativeInfinity, sum = 0;
        int chunk = tokenChunk[t], first = tableStart[chunk], count = tableLength[chunk];
        for (int e = first; e < first + count; e++)
        {
            int block = entries[5 * e], firstPosition = entries[5 * e + 1], length = entries[5 * e + 2], rotation = entries[5 * e + 3], firstSlot = entries[5 * e + 4];
            if (firstPosition > position) break;
            long angles = (long)(position - rotation) * half;
            for (int p = 0; p < half; p++)
            {
                int a = shape.Interleaved != 0 ? 2 * p : p, b = shape.Interleaved != 0 ? 2 * p + 1 : p + half;
                float c = cos[angles + p], s = sin[angles + p], qa = q[row + a], qb = q[row + b];
                rotated[row + a] = qa * c - qb * s;
                rotated[row + b] = qa * s + qb * c;
            }
            for (int j = 0; j < length && firstPosition + j <= position; j++)
            {
                float score = 0;
                for (int d = 0; d < dim; d++) score += rotated[row + d] * pool[Offset(shape, block, layer, 0, kvHead, firstSlot + j, d)];
                score *= scale;
                float next = MathF.Max(max, score), correction = MathF.Exp(max - next), weight = MathF.Exp(score - next);
                sum = sum * correction + weight;
                for (int d = 0; d < dim; d++) output[row + d] = output[row + d] * correction + weight * pool[Offset(shape, block, layer, 1, kvHead, firstSlot + j, d)];
                max = next;
            }
        }
        for (int d = 0; d < dim; d++) output[row + d] /= sum;
    }

    /// <summary>
    /// <see cref="Attention{TShape}"/> for a GPU, one warp per (head, token, split) — the same arguments, the scalars in
    /// <paramref name="step"/> (ILGPU's launchers take at most 14 arguments). A token's block-table entries are divided
    /// among <see cref="AttentionStep.Splits"/> warps (decode has few rows, so each row's keys are spread over many
    /// warps); with more than one split each warp leaves (max, sum, unnormalised output) in <paramref name="partial"/>
    /// for <see cref="AttentionMerge"/>. Per entry (at most a warp of keys) each lane scores one key against the query
    /// (rotated for the entry, once per run of entries with the same rotation, into the warp's row of
    /// <paramref name="rotated"/>), the warp takes the entry's max and sum by shuffles, and each lane accumulates its own
    /// columns over the entry's values (coalesced rows, four keys' loads at a time). The output is kept in four registers
    /// per lane: a head wider than four warps of columns (an emulated CPU warp is narrow) takes several passes over the
    /// keys. Launch with <see cref="WarpsPerGroup"/> warps per group, heads × tokens × splits warps in all.
    /// </summary>
    public static void AttentionWarp<TShape>(ArrayView<float> q, ArrayView<float> pool, ArrayView<int> entries, ArrayView<int> tableStart, ArrayView<int> tableLength,
        ArrayView<int> tokenChunk, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, ArrayView<float> rotated, ArrayView<float> output,
        ArrayView<float> partial, TShape shape, AttentionStep step) where TShape : struct, IIlgpuShape
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize, lane = Warp.LaneIdx, width = Warp.WarpSize, layer = step.Layer, splits = step.Splits;
        float scale = step.Scale;
        // Spare warps of the last group run on a valid (head, token) and write nothing, so every lane reaches the shuffles.
        bool used = warp < shape.Heads * step.Tokens * splits;
        int split = used ? warp % splits : 0, rowIndex = used ? warp / splits : 0, head = rowIndex % shape.Heads, t = rowIndex / shape.Heads;
        int dim = shape.HeadDim, half = dim / 2, kvHead = head / (shape.Heads / shape.KvHeads), position = positions[t];
        long row = (long)rowIndex * dim, rotatedRow = ((long)rowIndex * splits + split) * dim;
        int chunk = tokenChunk[t], count = tableLength[chunk], perSplit = (count + splits - 1) / splits;
        int first = tableStart[chunk] + split * perSplit, last = Math.Min(tableStart[chunk] + count, first + perSplit);
        bool vectors = dim % 4 == 0;
        var pool4 = pool.Cast<Float4>();
        var rotated4 = rotated.Cast<Float4>();
        for (int pass = 0; pass < dim; pass += 4 * width)
        {
            float max = float.NegativeInfinity, sum = 0, a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            int d0 = pass + lane, d1 = d0 + width, d2 = d1 + width, d3 = d2 + width, lastRotation = int.MinValue;
            for (int e = first; e < last; e++)
            {
                int block = entries[5 * e], firstPosition = entries[5 * e + 1], length = entries[5 * e + 2], rotation = entries[5 * e + 3], firstSlot = entries[5 * e + 4];
                if (firstPosition > position) break;
                if (rotation != lastRotation)
                {
                    long angles = (long)(position - rotation) * half;
                    for (int p = lane; p < half; p += width)
                    {
                        int a = shape.Interleaved != 0 ? 2 * p : p, b = shape.Interleaved != 0 ? 2 * p + 1 : p + half;
                        float c = cos[angles + p], s = sin[angles + p], qa = q[row + a], qb = q[row + b];
                        if (used)
                        {
                            rotated[rotatedRow + a] = qa * c - qb * s;
                            rotated[rotatedRow + b] = qa * s + qb * c;
                        }
                    }
                    Warp.Barrier();   // every lane reads the whole rotated query
                    lastRotation = rotation;
                }
                int keys = Math.Min(length, position - firstPosition + 1);
                float score = float.NegativeInfinity;
                if (lane < keys)
                {
                    long key = Offset(shape, block, layer, 0, kvHead, firstSlot + lane, 0);
                    float dot = 0;
                    if (vectors)
                    {
                        // Two 16-byte loads of the key and two of the query in flight per iteration.
                        long k4 = key / 4, q4 = rotatedRow / 4;
                        int quads = dim / 4, d = 0;
                        float dot1 = 0;
                        for (; d + 1 < quads; d += 2)
                        {
                            Float4 ka = pool4[k4 + d], kb = pool4[k4 + d + 1], qa = rotated4[q4 + d], qb = rotated4[q4 + d + 1];
                            dot += ka.X * qa.X + ka.Y * qa.Y + ka.Z * qa.Z + ka.W * qa.W;
                            dot1 += kb.X * qb.X + kb.Y * qb.Y + kb.Z * qb.Z + kb.W * qb.W;
                        }
                        if (d < quads)
                        {
                            Float4 ka = pool4[k4 + d], qa = rotated4[q4 + d];
                            dot += ka.X * qa.X + ka.Y * qa.Y + ka.Z * qa.Z + ka.W * qa.W;
                        }
                        dot += dot1;
                    }
                    else
                        for (int d = 0; d < dim; d++) dot += rotated[rotatedRow + d] * pool[key + d];
                    score = dot * scale;
                }
                float entryMax = score;
                for (int offset = width / 2; offset > 0; offset /= 2) entryMax = MathF.Max(entryMax, Warp.ShuffleXor(entryMax, offset));
                float next = MathF.Max(max, entryMax), correction = MathF.Exp(max - next);
                float weight = lane < keys ? MathF.Exp(score - next) : 0, entrySum = weight;
                for (int offset = width / 2; offset > 0; offset /= 2) entrySum += Warp.ShuffleXor(entrySum, offset);
                sum = sum * correction + entrySum;
                a0 *= correction;
                a1 *= correction;
                a2 *= correction;
                a3 *= correction;
                // Four keys at a time, their loads issued together; past the last key the index stays on it with weight 0.
                long values = Offset(shape, block, layer, 1, kvHead, firstSlot, 0);
                for (int j = 0; j < keys; j += 4)
                {
                    float p0 = Warp.Shuffle(weight, j), p1 = Warp.Shuffle(weight, j + 1), p2 = Warp.Shuffle(weight, j + 2), p3 = Warp.Shuffle(weight, j + 3);
                    long v0 = values + (long)j * dim, v1 = values + (long)Math.Min(j + 1, keys - 1) * dim,
                        v2 = values + (long)Math.Min(j + 2, keys - 1) * dim, v3 = values + (long)Math.Min(j + 3, keys - 1) * dim;
                    if (j + 1 >= keys) p1 = 0;
                    if (j + 2 >= keys) p2 = 0;
                    if (j + 3 >= keys) p3 = 0;
                    if (d0 < dim) a0 += p0 * pool[v0 + d0] + p1 * pool[v1 + d0] + p2 * pool[v2 + d0] + p3 * pool[v3 + d0];
                    if (d1 < dim) a1 += p0 * pool[v0 + d1] + p1 * pool[v1 + d1] + p2 * pool[v2 + d1] + p3 * pool[v3 + d1];
                    if (d2 < dim) a2 += p0 * pool[v0 + d2] + p1 * pool[v1 + d2] + p2 * pool[v2 + d2] + p3 * pool[v3 + d2];
                    if (d3 < dim) a3 += p0 * pool[v0 + d3] + p1 * pool[v1 + d3] + p2 * pool[v2 + d3] + p3 * pool[v3 + d3];
                }
                max = next;
                Warp.Barrier();   // the scores are read before the next entry's rotation overwrites the query
            }
            if (!used) continue;
            if (splits == 1)
            {
                if (d0 < dim) output[row + d0] = a0 / sum;
                if (d1 < dim) output[row + d1] = a1 / sum;
                if (d2 < dim) output[row + d2] = a2 / sum;
                if (d3 < dim) output[row + d3] = a3 / sum;
                continue;
            }
            // This split's share: its max and sum, and the output before division (a split with no keys leaves −∞, 0, 0).
            long at = ((long)rowIndex * splits + split) * (dim + 2);
            if (lane == 0 && pass == 0)
            {
                partial[at] = max;
                partial[at + 1] = sum;
            }
            if (d0 < dim) partial[at + 2 + d0] = a0;
            if (d1 < dim) partial[at + 2 + d1] = a1;
            if (d2 < dim) partial[at + 2 + d2] = a2;
            if (d3 < dim) partial[at + 2 + d3] = a3;
        }
    }

    /// <summary>
    /// Combines the splits <see cref="AttentionWarp{TShape}"/> left in <paramref name="partial"/> (per row and split: max,
    /// sum, dim unnormalised outputs) into each row's output: the splits rescaled to the largest max. One warp per row
    /// (head, token); launch with <see cref="WarpsPerGroup"/> warps per group, <paramref name="rows"/> warps in all.
    /// </summary>
    public static void AttentionMerge(ArrayView<float> partial, ArrayView<float> output, int rows, int dim, int splits)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize, lane = Warp.LaneIdx;
        bool used = warp < rows;
        long first = (long)(used ? warp : 0) * splits * (dim + 2);
        float max = float.NegativeInfinity;
        for (int s = lane; s < splits; s += Warp.WarpSize) max = MathF.Max(max, partial[first + s * (dim + 2)]);
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2) max = MathF.Max(max, Warp.ShuffleXor(max, offset));
        float sum = 0;
        for (int s = 0; s < splits; s++) sum += partial[first + s * (dim + 2) + 1] * MathF.Exp(partial[first + s * (dim + 2)] - max);
        for (int d = lane; used && d < dim; d += Warp.WarpSize)
        {
            float value = 0;
            for (int s = 0; s < splits; s++) value += partial[first + s * (dim + 2) + 2 + d] * MathF.Exp(partial[first + s * (dim + 2)] - max);
            output[(long)warp * dim + d] = value / sum;
        }
    }

    /// <summary>
    /// The first half of next[r] = the index of row r's largest logit (the first, on ties, as
    /// <c>TensorPrimitives.IndexOfMax</c> picks), so a greedy step sends the host ids, not logits: group g of row r takes
    /// the best of slice g of the row (a vocabulary of 128k floats walked by one warp is a chain of 4k dependent loads)
    /// into best[r × slices + g] and at[r × slices + g] (−∞ and <see cref="int.MaxValue"/> for an empty slice). Launch
    /// <paramref name="slices"/> × rows groups of up to <see cref="NormThreads"/> threads; <see cref="ArgMaxMerge"/> finishes.
    /// </summary>
    public static void ArgMaxSlices(ArrayView<float> logits, ArrayView<float> best, ArrayView<int> at, int vocab, int slices)
    {
        var groupBest = SharedMemory.Allocate<float>(NormThreads);
        var groupAt = SharedMemory.Allocate<int>(NormThreads);
        int row = Grid.IdxX / slices, slice = Grid.IdxX % slices, thread = Group.IdxX;
        int length = (vocab + slices - 1) / slices, from = slice * length, to = Math.Min(vocab, from + length);
        long start = (long)row * vocab;
        float value = float.NegativeInfinity;
        int index = int.MaxValue;
        for (int j = from + thread; j < to; j += Group.DimX)
            if (logits[start + j] > value || index == int.MaxValue)
            {
                value = logits[start + j];
                index = j;
            }
        (value, index) = WarpBest(value, index);
        if (Warp.LaneIdx == 0)
        {
            groupBest[Warp.WarpIdx] = value;
            groupAt[Warp.WarpIdx] = index;
        }
        Group.Barrier();
        if (thread != 0) return;
        for (int w = 1; w < Group.DimX / Warp.WarpSize; w++)
            if (groupBest[w] > value || (groupBest[w] == value && groupAt[w] < index))
            {
                value = groupBest[w];
                index = groupAt[w];
            }
        best[Grid.IdxX] = value;
        at[Grid.IdxX] = index;
    }

    /// <summary>
    /// next[r] = the best of row r's <paramref name="slices"/> (from <see cref="ArgMaxSlices"/>), one warp per row. Launch with
    /// <see cref="WarpsPerGroup"/> warps per group, <paramref name="rows"/> warps in all.
    /// </summary>
    public static void ArgMaxMerge(ArrayView<float> best, ArrayView<int> at, ArrayView<int> next, int slices, int rows)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize;
        bool used = warp < rows;
        long first = (long)(used ? warp : 0) * slices;
        float value = float.NegativeInfinity;
        int index = int.MaxValue;
        for (int s = Warp.LaneIdx; s < slices; s += Warp.WarpSize)
            if (best[first + s] > value || (best[first + s] == value && at[first + s] < index))
            {
                value = best[first + s];
                index = at[first + s];
            }
        (value, index) = WarpBest(value, index);
        if (used && Warp.LaneIdx == 0) next[warp] = index;
    }

    /// <summary>The warp's best (value, index): the larger value, the smaller index on ties; in every lane.</summary>
    private static (float Value, int Index) WarpBest(float value, int index)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            float otherValue = Warp.ShuffleXor(value, offset);
            int otherIndex = Warp.ShuffleXor(index, offset);
            if (otherValue > value || (otherValue == value && otherIndex < index))
            {
                value = otherValue;
                index = otherIndex;
            }
        }
        return (value, index);
    }
}
