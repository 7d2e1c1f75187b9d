using ILGPU;

namespace KvPacket.Compute.Ilgpu;

/// <summary>K/V append with RoPE and paged attention over realigned block-table entries, generic over the attention shape.</summary>
public static partial class IlgpuKernels
{
    /// <summary>Where element <paramref name="d"/> of (block, layer, K = 0 or V = 1, kv head, slot) lives in the pool.</summary>
    private static long Offset<TShape>(TShape shape, int block, int layer, int value, int head, int slot, int d) where TShape : struct, IIlgpuShape =>
        ((long)block * shape.Layers * 2 + layer * 2 + value) * shape.BlockSize * shape.KvHeads * shape.HeadDim + ((long)head * shape.BlockSize + slot) * shape.HeadDim + d;

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
    /// <paramref name="rotated"/>; a row in dynamic shared memory instead measured 1.6× slower on the H200), the warp
    /// takes the entry's max and sum by shuffles, and each lane accumulates its own columns over the entry's values
    /// (coalesced rows, eight keys' loads at a time). The output is kept in four registers
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
                // Eight keys at a time, their loads issued together; past the last key the index stays on it with weight 0.
                long values = Offset(shape, block, layer, 1, kvHead, firstSlot, 0);
                for (int j = 0; j < keys; j += 8)
                {
                    float p0 = Warp.Shuffle(weight, j), p1 = Warp.Shuffle(weight, j + 1), p2 = Warp.Shuffle(weight, j + 2), p3 = Warp.Shuffle(weight, j + 3),
                        p4 = Warp.Shuffle(weight, j + 4), p5 = Warp.Shuffle(weight, j + 5), p6 = Warp.Shuffle(weight, j + 6), p7 = Warp.Shuffle(weight, j + 7);
                    long v0 = values + (long)j * dim, v1 = values + (long)Math.Min(j + 1, keys - 1) * dim, v2 = values + (long)Math.Min(j + 2, keys - 1) * dim,
                        v3 = values + (long)Math.Min(j + 3, keys - 1) * dim, v4 = values + (long)Math.Min(j + 4, keys - 1) * dim,
                        v5 = values + (long)Math.Min(j + 5, keys - 1) * dim, v6 = values + (long)Math.Min(j + 6, keys - 1) * dim,
                        v7 = values + (long)Math.Min(j + 7, keys - 1) * dim;
                    if (j + 1 >= keys) p1 = 0;
                    if (j + 2 >= keys) p2 = 0;
                    if (j + 3 >= keys) p3 = 0;
                    if (j + 4 >= keys) p4 = 0;
                    if (j + 5 >= keys) p5 = 0;
                    if (j + 6 >= keys) p6 = 0;
                    if (j + 7 >= keys) p7 = 0;
                    if (d0 < dim) a0 += WeightedColumn(pool, d0, v0, v1, v2, v3, v4, v5, v6, v7, p0, p1, p2, p3, p4, p5, p6, p7);
                    if (d1 < dim) a1 += WeightedColumn(pool, d1, v0, v1, v2, v3, v4, v5, v6, v7, p0, p1, p2, p3, p4, p5, p6, p7);
                    if (d2 < dim) a2 += WeightedColumn(pool, d2, v0, v1, v2, v3, v4, v5, v6, v7, p0, p1, p2, p3, p4, p5, p6, p7);
                    if (d3 < dim) a3 += WeightedColumn(pool, d3, v0, v1, v2, v3, v4, v5, v6, v7, p0, p1, p2, p3, p4, p5, p6, p7);
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

    /// <summary>Σ_i p_i · pool[v_i + d]: column d of eight value rows, weighted.</summary>
    private static float WeightedColumn(ArrayView<float> pool, int d, long v0, long v1, long v2, long v3, long v4, long v5, long v6, long v7,
        float p0, float p1, float p2, float p3, float p4, float p5, float p6, float p7) =>
        p0 * pool[v0 + d] + p1 * pool[v1 + d] + p2 * pool[v2 + d] + p3 * pool[v3 + d] + p4 * pool[v4 + d] + p5 * pool[v5 + d] + p6 * pool[v6 + d] + p7 * pool[v7 + d];

    /// <summary>
    /// Combines the splits <see cref="AttentionWarp{TShape}"/> left in <paramref name="partial"/> (per row and split: max,
    /// sum, dim unnormalised outputs) into each row's output: the splits rescaled to the largest max. One warp per row
    /// (head, token): the lanes take the splits' maxima and sums together, then each lane its columns over four splits
    /// at a time, their loads issued together (a loop of one load per split waits a memory latency per split).
    /// Launch with <see cref="WarpsPerGroup"/> warps per group, <paramref name="rows"/> warps in all.
    /// </summary>
    public static void AttentionMerge(ArrayView<float> partial, ArrayView<float> output, int rows, int dim, int splits)
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize, lane = Warp.LaneIdx, stride = dim + 2;
        bool used = warp < rows;
        long first = (long)(used ? warp : 0) * splits * stride;
        float max = float.NegativeInfinity;
        for (int s = lane; s < splits; s += Warp.WarpSize) max = MathF.Max(max, partial[first + s * stride]);
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2) max = MathF.Max(max, Warp.ShuffleXor(max, offset));
        float sum = 0;
        for (int s = lane; s < splits; s += Warp.WarpSize) sum += partial[first + s * stride + 1] * MathF.Exp(partial[first + s * stride] - max);
        sum = WarpSum(sum);
        for (int d = lane; used && d < dim; d += Warp.WarpSize)
        {
            float value = 0;
            int s = 0;
            for (; s + 3 < splits; s += 4)
            {
                long a0 = first + s * stride, a1 = a0 + stride, a2 = a1 + stride, a3 = a2 + stride;
                float m0 = partial[a0], m1 = partial[a1], m2 = partial[a2], m3 = partial[a3];
                float v0 = partial[a0 + 2 + d], v1 = partial[a1 + 2 + d], v2 = partial[a2 + 2 + d], v3 = partial[a3 + 2 + d];
                value += v0 * MathF.Exp(m0 - max) + v1 * MathF.Exp(m1 - max) + v2 * MathF.Exp(m2 - max) + v3 * MathF.Exp(m3 - max);
            }
            for (; s < splits; s++)
            {
                long at = first + s * stride;
                value += partial[at + 2 + d] * MathF.Exp(partial[at] - max);
            }
            output[(long)warp * dim + d] = value / sum;
        }
    }
}
