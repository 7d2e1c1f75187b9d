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
