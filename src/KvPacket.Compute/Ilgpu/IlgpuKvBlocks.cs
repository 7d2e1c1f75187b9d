using ILGPU;
using ILGPU.Runtime;
using KvPacket.Compute.Kv;

namespace KvPacket.Compute.Ilgpu;

/// <summary>KV blocks in one ILGPU buffer of f32, laid out as the host's <see cref="KvBlockPool"/> (block b starts at float b × BlockBytes / 4).</summary>
public sealed class IlgpuKvBlocks : KvBlocks
{
    /// <summary>Reserves <paramref name="blockCount"/> f32 blocks of <paramref name="layout"/> on <paramref name="accelerator"/>.</summary>
    public IlgpuKvBlocks(Accelerator accelerator, KvCacheLayout layout, int blockCount) : base(layout, blockCount)
    {
        if (layout.Type != Core.Memory.DType.F32) throw new ArgumentException($"The ILGPU backend keeps its KV cache in F32, not {layout.Type}.", nameof(layout));
        Memory = accelerator.Allocate1D<float>(layout.BlockBytes / 4 * blockCount);
    }

    /// <summary>The blocks' memory.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Memory { get; }

    /// <summary>Block <paramref name="block"/>'s floats.</summary>
    public ArrayView1D<float, Stride1D.Dense> Block(int block) => Memory.View.SubView(block * (Layout.BlockBytes / 4), Layout.BlockBytes / 4);

    /// <inheritdoc />
    public override void Dispose() => Memory.Dispose();
}
