using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Generation;

/// <summary>When generation stops and how tokens are chosen.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most new tokens to produce.</summary>
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>Tokens that end generation (included in the output); null uses the model's EOS ids, empty never stops early.</summary>
    public IReadOnlyList<int>? StopTokens { get; init; }
    /// <summary>Token choice.</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
}
