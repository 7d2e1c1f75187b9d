using ILGPU;
using ILGPU.Runtime;

namespace KvPacket.Compute.Ilgpu;

/// <summary>
/// The shape-dependent ILGPU kernels — K/V append with RoPE, and paged attention — compiled for one attention shape: a
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

    /// <summary>What the kernels were compiled for: the card's name, or "generic".</summary>
    public required string Shape { get; init; }

    /// <summary>The kernels compiled by <paramref name="accelerator"/> for <paramref name="shape"/>.</summary>
    public static IlgpuAttentionKernels Load<TShape>(Accelerator accelerator, TShape shape, string name) where TShape : struct, IIlgpuShape
    {
        var append = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<float>, ArrayView<float>, TShape, int>(IlgpuKernels.AppendKv);
        return new IlgpuAttentionKernels
        {
            AppendKv = (i, k, v, pool, blocks, slots, positions, cos, sin, layer) => append(i, k, v, pool, blocks, slots, positions, cos, sin, shape, layer),
            Attention = accelerator.AcceleratorType == AcceleratorType.CPU ? ThreadPerRow(accelerator, shape) : WarpPerRow(accelerator, shape),
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
        int groupThreads = IlgpuKernels.WarpsPerGroup * accelerator.WarpSize;
        KernelConfig Warps(long count) => new((int)((count + IlgpuKernels.WarpsPerGroup - 1) / IlgpuKernels.WarpsPerGroup), groupThreads);
        return (i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, layer, scale, partial, splits) =>
        {
            int rows = i.X * i.Y;
            kernel(Warps((long)rows * splits), q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, partial, shape,
                new IlgpuKernels.AttentionStep { Layer = layer, Scale = scale, Tokens = i.Y, Splits = splits });
            if (splits > 1) merge(Warps(rows), partial, output, rows, shape.HeadDim, splits);
        };
    }
}
