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
    /// <summary>Subtracted from a token's logit once per time it was generated before (OpenAI's frequency_penalty, −2 to 2).</summary>
    public float FrequencyPenalty { get; init; }
    /// <summary>Subtracted from the logit of every token generated before, once (OpenAI's presence_penalty, −2 to 2).</summary>
    public float PresencePenalty { get; init; }
    /// <summary>Added to tokens' logits before every choice (OpenAI's logit_bias, −100 to 100 per token).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Greedy decoding.</summary>
    public static SamplingOptions Greedy { get; } = new();

    /// <summary>Throws when a field is out of range for a vocabulary of <paramref name="vocabSize"/> tokens.</summary>
    public void Validate(int vocabSize)
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be finite and ≥ 0.");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be ≥ 0.");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in (0, 1].");
        if (!(FrequencyPenalty is >= -2 and <= 2)) throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), FrequencyPenalty, "the frequency penalty must be between -2 and 2.");
        if (!(PresencePenalty is >= -2 and <= 2)) throw new ArgumentOutOfRangeException(nameof(PresencePenalty), PresencePenalty, "the presence penalty must be between -2 and 2.");
        foreach (var (token, bias) in LogitBias ?? new Dictionary<int, float>())
        {
            if ((uint)token >= (uint)vocabSize) throw new ArgumentOutOfRangeException(nameof(LogitBias), $"logit bias for token {token}, outside the vocabulary (0..{vocabSize - 1}).");
            if (!(bias is >= -100 and <= 100)) throw new ArgumentOutOfRangeException(nameof(LogitBias), bias, $"logit bias for token {token} must be between -100 and 100.");
        }
    }
}
