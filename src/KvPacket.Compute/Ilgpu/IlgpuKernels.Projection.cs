using ILGPU;

namespace KvPacket.Compute.Ilgpu;

/// <summary>The attention block's input side in one launch for decode: RMSNorm, the query/key/value product, RoPE and the K/V append.</summary>
public static partial class IlgpuKernels
{
    /// <summary>The scalar arguments of <see cref="ProjectQkvWarp{TShape}"/>.</summary>
    public struct ProjectionStep
    {
        /// <summary>The transformer block whose KV planes get the keys and values.</summary>
        public int Layer;
        /// <summary>Tokens in the step.</summary>
        public int Tokens;
        /// <summary>Width of the residual row (the product's columns).</summary>
        public int Columns;
        /// <summary>1 when the matrix has a bias (Qwen2's q/k/v), else 0.</summary>
        public int HasBias;
        /// <summary>RMSNorm's ε.</summary>
        public float Epsilon;
    }

    /// <summary>
    /// For each token t of a decode step: x̂ = x[t] / rms(x[t]) (the attention norm's weight folded into
    /// <paramref name="w"/>, whose rows are the query, key and value products in turn), q[t] = x̂ · Wqᵀ (+ bias), and
    /// its key — rotated at positions[t] — and value written straight into (blocks[t], slots[t]) of the pool, so neither
    /// the norm nor the append is a launch of its own. One warp per pair of rows and token, the pair read together
    /// (<see cref="WarpDots"/>): two query rows, a key's RoPE pair (2p and 2p + 1 interleaved, p and p + d/2
    /// rotate-half) or two value rows. Launch with <see cref="WarpsPerGroup"/> warps per group,
    /// (query dim + 2 × KV dim) / 2 × tokens warps in all.
    /// </summary>
    public static void ProjectQkvWarp<TShape>(ArrayView<float> w, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> q, ArrayView<float> pool,
        ArrayView<int> blocks, ArrayView<int> slots, ArrayView<int> positions, ArrayView<float> cos, ArrayView<float> sin, TShape shape, ProjectionStep step)
        where TShape : struct, IIlgpuShape
    {
        int warp = Grid.GlobalIndex.X / Warp.WarpSize, dim = shape.HeadDim, half = dim / 2, columns = step.Columns;
        int queryRows = shape.Heads * dim, kvRows = shape.KvHeads * dim, queryPairs = queryRows / 2, kvPairs = kvRows / 2, pairs = queryPairs + 2 * kvPairs;
        bool used = warp < pairs * step.Tokens;
        int pair = used ? warp % pairs : 0, t = used ? warp / pairs : 0;
        // The pair's rows in w: which part (0 query, 1 key, 2 value), its head and the two columns within the head.
        int part = pair < queryPairs ? 0 : pair < queryPairs + kvPairs ? 1 : 2, head = 0, p = 0, da = 0, db = 0, a, b;
        if (part == 0)
        {
            a = 2 * pair;
            b = a + 1;
        }
        else
        {
            int inPart = part == 1 ? pair - queryPairs : pair - queryPairs - kvPairs;
            head = inPart / half;
            p = inPart % half;
            da = part == 2 || shape.Interleaved != 0 ? 2 * p : p;
            db = part == 2 || shape.Interleaved != 0 ? 2 * p + 1 : p + half;
            int first = queryRows + (part - 1) * kvRows + head * dim;
            a = first + da;
            b = first + db;
        }
        Float4 dots = WarpDots(w, (long)a * columns, w, (long)b * columns, x, (long)t * columns, columns, used);
        float scale = InverseRms(WarpSum(dots.Z), columns, step.Epsilon), ya = WarpSum(dots.X) * scale, yb = WarpSum(dots.Y) * scale;
        if (!used || Warp.LaneIdx != 0) return;
        if (step.HasBias != 0)
        {
            ya += bias[a];
            yb += bias[b];
        }
        if (part == 0)
        {
            q[(long)t * queryRows + a] = ya;
            q[(long)t * queryRows + b] = yb;
        }
        else if (part == 1)
        {
            long angle = (long)positions[t] * half + p;
            float c = cos[angle], s = sin[angle];
            pool[Offset(shape, blocks[t], step.Layer, 0, head, slots[t], da)] = ya * c - yb * s;
            pool[Offset(shape, blocks[t], step.Layer, 0, head, slots[t], db)] = ya * s + yb * c;
        }
        else
        {
            pool[Offset(shape, blocks[t], step.Layer, 1, head, slots[t], da)] = ya;
            pool[Offset(shape, blocks[t], step.Layer, 1, head, slots[t], db)] = yb;
        }
    }
}
