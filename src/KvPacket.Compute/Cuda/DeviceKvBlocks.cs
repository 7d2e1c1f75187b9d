using KvPacket.Compute.Kv;

namespace KvPacket.Compute.Cuda;

/// <summary>
/// KV blocks in one device allocation (the CUDA backend's cache), laid out as the host's <see cref="KvBlockPool"/>:
/// per layer, K then V planes of [KV heads][block tokens][head dim].
/// </summary>
public sealed class DeviceKvBlocks : KvBlocks
{
    /// <summary>Reserves <paramref name="blockCount"/> blocks of <paramref name="layout"/> on <paramref name="device"/>.</summary>
    public DeviceKvBlocks(CudaDevice device, KvCacheLayout layout, int blockCount) : base(layout, blockCount)
        => Memory = device.Allocate(layout.BlockBytes * blockCount);

    /// <summary>The blocks' device memory; block b starts at b × <see cref="KvCacheLayout.BlockBytes"/>.</summary>
    public DeviceBuffer Memory { get; }

    /// <inheritdoc />
    public override void Dispose() => Memory.Dispose();
}
