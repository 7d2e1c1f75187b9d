using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Serving;

/// <summary>How a request's generation runs and when it stops.</summary>
public sealed record GenerationLimits
{
    /// <summary>Most tokens to generate.</summary>
    public int MaxTokens { get; init; } = 128;

    /// <summary>Token choice (greedy by default).</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>Tokens that end generation (included in the output); the model's EOS ids when null.</summary>
    public IReadOnlyList<int>? StopTokens { get; init; }

    /// <summary>Token sequences that end generation once generated (included in the output).</summary>
    public IReadOnlyList<int[]> StopSequences { get; init; } = [];

    /// <summary>
    /// Log-probabilities with each token: null for none, otherwise the chosen token's and this many alternatives'
    /// (0 to <see cref="TokenLogProbs.MaxTop"/>); computed only when asked for.
    /// </summary>
    public int? LogProbs { get; init; }

    /// <summary>Wall-clock time after which the request is ended (finish reason <see cref="FinishReason.Deadline"/>).</summary>
    public DateTimeOffset? Deadline { get; init; }
}

/// <summary>Why a request ended.</summary>
public enum FinishReason
{
    /// <summary>It generated its maximum number of tokens.</summary>
    Length,
    /// <summary>It generated a stop token or stop sequence.</summary>
    Stop,
    /// <summary>Its caller cancelled it.</summary>
    Cancelled,
    /// <summary>Its deadline passed.</summary>
    Deadline,
    /// <summary>It failed (the message says why).</summary>
    Error,
}

/// <summary>What one request cost.</summary>
/// <param name="PromptTokens">Tokens computed for the prompt (packets excluded).</param>
/// <param name="PacketTokens">Tokens placed from packets, no compute: the documents', and a prompt prefix the scheduler keeps as one.</param>
/// <param name="GeneratedTokens">Tokens generated.</param>
/// <param name="QueueSeconds">From submission to admission.</param>
/// <param name="TimeToFirstTokenSeconds">From submission to the first generated token.</param>
/// <param name="TotalSeconds">From submission to the end.</param>
/// <param name="Preemptions">Times its KV was dropped for lack of blocks and recomputed.</param>
/// <param name="Reason">Why it ended.</param>
/// <param name="Error">The failure, for <see cref="FinishReason.Error"/>.</param>
public sealed record GenerationSummary(int PromptTokens, int PacketTokens, int GeneratedTokens, double QueueSeconds, double TimeToFirstTokenSeconds,
    double TotalSeconds, int Preemptions, FinishReason Reason, string? Error = null);

/// <summary>Receives a request's tokens as the scheduler produces them (on the scheduler's thread: return quickly).</summary>
public interface IGenerationSink
{
    /// <summary>A generated token, with its log-probabilities when the request asked for them.</summary>
    void OnToken(int token, TokenLogProbs? logProbs);

    /// <summary>The request ended; no more calls follow.</summary>
    void OnFinished(GenerationSummary summary);
}
