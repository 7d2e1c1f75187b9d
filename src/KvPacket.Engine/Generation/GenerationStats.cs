namespace KvPacket.Engine.Generation;

/// <summary>What one generation did and how long it took.</summary>
/// <param name="PromptTokens">Tokens prefilled.</param>
/// <param name="GeneratedTokens">Tokens produced.</param>
/// <param name="PrefillSeconds">Time to the first token's logits (prefill).</param>
/// <param name="DecodeSeconds">Time for the remaining decode steps.</param>
/// <param name="StoppedOnToken">Whether a stop token ended generation.</param>
public readonly record struct GenerationStats(int PromptTokens, int GeneratedTokens, double PrefillSeconds, double DecodeSeconds, bool StoppedOnToken)
{
    /// <summary>Prompt tokens per second of prefill.</summary>
    public double PrefillTokensPerSecond => PromptTokens / Math.Max(PrefillSeconds, 1e-12);
    /// <summary>Decode steps per second (after the first generated token).</summary>
    public double DecodeTokensPerSecond => Math.Max(GeneratedTokens - 1, 0) / Math.Max(DecodeSeconds, 1e-12);
}
