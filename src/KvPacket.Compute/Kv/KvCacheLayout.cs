using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Compute.Kv;

/// <summary>
/// How one KV block is laid out: for each layer, K then V, each [kv_heads, BlockSize tokens, head_dim] in
/// <see cref="Type"/>. Head-major planes keep one head's keys for a block contiguous, so attention reads (and
/// widens) them in one run. A block is one contiguous run of bytes across all layers, so a packet's block can be
/// stored, loaded and shared as a unit.
/// </summary>
public sealed record KvCacheLayout(int LayerCount, int KvHeadCount, int HeadDim, int BlockSize, DType Type)
{
    /// <summary>The default block size in tokens.</summary>
    public const int DefaultBlockSize = 16;

    /// <summary>The layout for <paramref name="config"/> with f16 (default) or f32 elements.</summary>
    public static KvCacheLayout For(ModelConfig config, DType type = DType.F16, int blockSize = DefaultBlockSize)
    {
        if (type is not (DType.F16 or DType.F32)) throw new ArgumentException($"KV cache elements must be F16 or F32, not {type}.", nameof(type));
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        return new KvCacheLayout(config.LayerCount, config.KvHeadCount, config.HeadDim, blockSize, type);
    }

    /// <summary>Elements in one token's K (or V) row.</summary>
    public int KvDim => KvHeadCount * HeadDim;

    /// <summary>Element offset of (kv head <paramref name="head"/>, slot <paramref name="slot"/>) within a K or V plane.</summary>
    public long Offset(int head, int slot) => ((long)head * BlockSize + slot) * HeadDim;

    /// <summary>Bytes per element.</summary>
    public int ElementBytes => Type == DType.F16 ? 2 : 4;

    /// <summary>Bytes of one layer's K (or V) in one block.</summary>
    public long PlaneBytes => (long)BlockSize * KvDim * ElementBytes;

    /// <summary>Bytes of one whole block.</summary>
    public long BlockBytes => PlaneBytes * 2 * LayerCount;
}
