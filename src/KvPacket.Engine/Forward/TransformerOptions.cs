using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;

namespace KvPacket.Engine.Forward;

/// <summary>Sizes and types chosen when a model is prepared for inference.</summary>
public sealed record TransformerOptions
{
    /// <summary>KV element type: f16 (default) or f32.</summary>
    public DType KvType { get; init; } = DType.F16;
    /// <summary>Tokens per KV block.</summary>
    public int KvBlockSize { get; init; } = KvCacheLayout.DefaultBlockSize;
    /// <summary>Total tokens the KV cache can hold across all sequences.</summary>
    public int KvCacheTokens { get; init; } = 8192;
    /// <summary>Most tokens in one forward step (decode tokens plus prefill chunks).</summary>
    public int MaxBatchTokens { get; init; } = 512;
    /// <summary>Most sequences in one forward step.</summary>
    public int MaxBatchSequences { get; init; } = 64;
    /// <summary>Threads for kernels; 0 means one per processor.</summary>
    public int Threads { get; init; }
    /// <summary>Use the kernels generated for the model's card when its shape has one (the default), or always the generic ones.</summary>
    public bool SpecialisedKernels { get; init; } = true;
}
