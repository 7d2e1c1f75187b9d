namespace KvPacket.Engine.Sampling;

/// <summary>How the next token is chosen from logits.</summary>
public sealed record SamplingOptions
{
    /// <summary>0 picks the argmax (greedy); otherwise logits are divided by it before the softmax.</summary>
    public float Temperature { get; init; }
    /// <summary>Keep only the K most likely tokens; 0 keeps all.</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose mass reaches P; 1 keeps all.</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Seed of the sampler's random stream.</summary>
    public ulong Seed { get; init; } = 42;

    /// <summary>Greedy decoding.</summary>
    public static SamplingOptions Greedy { get; } = new();

    /// <summary>Throws when a field is out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be finite and ≥ 0.");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be ≥ 0.");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in (0, 1].");
    }
}
