using ILGPU;
using ILGPU.Runtime;

namespace KvPacket.Compute.Ilgpu;

/// <summary>
/// The shape-dependent ILGPU kernels — K/V append with RoPE, paged attention, and on a GPU the decode step's fused
/// norm + q/k/v product + append — compiled for one attention shape: a
/// model card's (its constants known to the compiler) or the run-time one.
/// </summary>
public sealed class IlgpuAttentionKernels
{
    /// <summary><see cref="IlgpuKernels.AppendKv{TShape}"/> for this shape (every argument but the shape).</summary>
    public required Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>,
        ArrayView<float>, int> AppendKv { get; init; }

    /// <summary>
    /// Paged attention for this shape (every argument of <see cref="IlgpuKernels.Attention{TShape}"/> but the shape; the
    /// index is (heads, tokens)), then a scratch of (max, sum, head dim) floats per row and split and the splits wanted:
    /// <see cref="IlgpuKernels.AttentionWarp{TShape}"/> (and its merge, with more than one split) on a GPU, the
    /// thread-per-row kernel (splits ignored) on ILGPU's CPU accelerator, whose emulated warps cost more than they save.
    /// </summary>
    public required Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, ArrayView<float>, int> Attention { get; init; }

    /// <summary>
    /// <see cref="IlgpuKernels.ProjectQkvWarp{TShape}"/> for this shape (every argument but the shape; launched for the
    /// step's tokens) on a GPU; null on ILGPU's CPU accelerator, which takes the norm, product and append one by one.
    /// </summary>
    public required Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, IlgpuKernels.ProjectionStep>? ProjectQkv { get; init; }

    /// <summary>What the kernels were compiled for: the card's name, or "generic".</summary>
    public required string Shape { get; init; }

    /// <summary>
    /// The kernels compiled by <paramref name="accelerator"/> for <paramref name="shape"/>: the GPU's warp kernels when
    /// <paramref name="warps"/>, else the thread-per-row ones (ILGPU's CPU accelerator, whose warps are emulated).
    /// </summary>
    public static IlgpuAttentionKernels Load<TShape>(Accelerator accelerator, TShape shape, string name, bool warps) where TShape : struct, IIlgpuShape
    {
        var append = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<float>, ArrayView<float>, TShape, int>(IlgpuKernels.AppendKv);
        return new IlgpuAttentionKernels
        {
            AppendKv = (i, k, v, pool, blocks, slots, positions, cos, sin, layer) => append(i, k, v, pool, blocks, slots, positions, cos, sin, shape, layer),
            Attention = warps ? WarpPerRow(accelerator, shape) : ThreadPerRow(accelerator, shape),
            ProjectQkv = warps ? ProjectQkvWarp(accelerator, shape) : null,
            Shape = name,
        };
    }

    private static Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, ArrayView<float>, int> ThreadPerRow<TShape>(Accelerator accelerator, TShape shape) where TShape : struct, IIlgpuShape
    {
        var kernel = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, TShape, int, float>(IlgpuKernels.Attention);
        return (i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, layer, scale, _, _) =>
            kernel(i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, shape, layer, scale);
    }

    private static Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, ArrayView<float>, int> WarpPerRow<TShape>(Accelerator accelerator, TShape shape) where TShape : struct, IIlgpuShape
    {
        // A lane scores one key of an entry, and an entry is at most one block.
        if (shape.BlockSize > accelerator.WarpSize)
            throw new NotSupportedException($"KV blocks of {shape.BlockSize} tokens are wider than a warp of {accelerator.WarpSize} lanes.");
        var kernel = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, TShape, IlgpuKernels.AttentionStep>(IlgpuKernels.AttentionWarp);
        var merge = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int>(IlgpuKernels.AttentionMerge);
        return (i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, layer, scale, partial, splits) =>
        {
            int rows = i.X * i.Y;
            kernel(IlgpuKernels.WarpGroups(accelerator, (long)rows * splits), q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, partial, shape,
                new IlgpuKernels.AttentionStep { Layer = layer, Scale = scale, Tokens = i.Y, Splits = splits });
            if (splits > 1) merge(IlgpuKernels.WarpGroups(accelerator, rows), partial, output, rows, shape.HeadDim, splits);
        };
    }

    private static Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, IlgpuKernels.ProjectionStep> ProjectQkvWarp<TShape>(Accelerator accelerator, TShape shape) where TShape : struct, IIlgpuShape
    {
        var kernel = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, TShape, IlgpuKernels.ProjectionStep>(IlgpuKernels.ProjectQkvWarp);
        int pairs = (shape.Heads + 2 * shape.KvHeads) * shape.HeadDim / 2;
        return (w, x, bias, q, pool, blocks, slots, positions, cos, sin, step) =>
            kernel(IlgpuKernels.WarpGroups(accelerator, (long)pairs * step.Tokens), w, x, bias, q, pool, blocks, slots, positions, cos, sin, shape, step);
    }
}
