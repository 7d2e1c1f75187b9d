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

    /// <summary><see cref="IlgpuKernels.Attention{TShape}"/> for this shape (every argument but the shape).</summary>
    public required Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float> Attention { get; init; }

    /// <summary>What the kernels were compiled for: the card's name, or "generic".</summary>
    public required string Shape { get; init; }

    /// <summary>The kernels compiled by <paramref name="accelerator"/> for <paramref name="shape"/>.</summary>
    public static IlgpuAttentionKernels Load<TShape>(Accelerator accelerator, TShape shape, string name) where TShape : struct, IIlgpuShape
    {
        var append = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<float>, ArrayView<float>, TShape, int>(IlgpuKernels.AppendKv);
        var attention = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, TShape, int, float>(IlgpuKernels.Attention);
        return new IlgpuAttentionKernels
        {
            AppendKv = (i, k, v, pool, blocks, slots, positions, cos, sin, layer) => append(i, k, v, pool, blocks, slots, positions, cos, sin, shape, layer),
            Attention = (i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, layer, scale) =>
                attention(i, q, pool, entries, start, length, chunk, positions, cos, sin, rotated, output, shape, layer, scale),
            Shape = name,
        };
    }
}
