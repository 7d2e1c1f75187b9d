using ILGPU;
using ILGPU.Runtime;

namespace KvPacket.Compute.Ilgpu;

/// <summary>
/// The forward pass's kernels written once in C# and compiled by ILGPU for whichever accelerator runs them (CUDA, or
/// ILGPU's CPU accelerator in CI): one thread per output element or row for the CPU accelerator, whose warps are
/// emulated, and warps, groups and shared-memory tiles for a GPU; each checked against float64 on a CPU accelerator, and
/// the model against the SIMD CPU backend. RoPE angles come from a host-built table (cos, sin per position and pair) so
/// every backend rotates by the same floats. One file per concept: norms and shared pieces here, then
/// <c>IlgpuKernels.Products.cs</c>, <c>IlgpuKernels.Attention.cs</c> and <c>IlgpuKernels.ArgMax.cs</c>.
/// </summary>
public static partial class IlgpuKernels
{
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

    /// <summary>Four floats read as one 16-byte element.</summary>
    public struct Float4
    {
        /// <summary>Elements 0 to 3.</summary>
        public float X, Y, Z, W;
    }

    /// <summary>Warps per group of the warp-per-row kernels.</summary>
    public const int WarpsPerGroup = 4;

    /// <summary>The launch of a warp-per-row kernel: enough groups of <see cref="WarpsPerGroup"/> warps for <paramref name="warps"/> warps on <paramref name="accelerator"/>.</summary>
    public static KernelConfig WarpGroups(Accelerator accelerator, long warps) =>
        new((int)((warps + WarpsPerGroup - 1) / WarpsPerGroup), WarpsPerGroup * accelerator.WarpSize);

    /// <summary>The sum of <paramref name="value"/> over the warp's lanes, in every lane.</summary>
    private static float WarpSum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2) value += Warp.ShuffleXor(value, offset);
        return value;
    }
}
