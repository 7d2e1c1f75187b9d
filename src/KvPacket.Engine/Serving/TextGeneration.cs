using System.Runtime.CompilerServices;
using KvPacket.Core.Tokenization;

namespace KvPacket.Engine.Serving;

/// <summary>One event of a text stream: a piece of text and the token that made it (−1 for text held back until the end), or the end.</summary>
/// <param name="Text">Text now safe to show (it cannot turn out to be part of a stop string).</param>
/// <param name="Token">The generated token, or −1.</param>
/// <param name="Summary">Set in the final event only.</param>
/// <param name="LogProbs">The token's log-probabilities when asked for (never for a token that is not written, like EOS).</param>
public readonly record struct TextEvent(string Text, int Token, GenerationSummary? Summary, Sampling.TokenLogProbs? LogProbs = null)
{
    /// <summary>Whether this is the final event.</summary>
    public bool IsFinal => Summary is not null;
}

/// <summary>
/// Generation as text, the way OpenAI's API and <c>IChatClient</c> define it: tokens decoded as they come (a character
/// split across tokens waits for its last byte), end-of-sequence and stop tokens counted but never written, and stop
/// strings matched on the text wherever tokens split them — generation is cancelled at the first one, which is left out,
/// and the final summary says <see cref="FinishReason.Stop"/> with the tokens generated up to it.
/// </summary>
public static class TextGeneration
{
    /// <summary>
    /// Runs <paramref name="request"/> on <paramref name="engine"/> and streams its text. Without a tokenizer the text is
    /// empty (the tokens still come) and <paramref name="stops"/> must be empty.
    /// </summary>
    public static async IAsyncEnumerable<TextEvent> GenerateTextAsync(this KvPacketEngine engine, EngineRequest request, IReadOnlyList<string>? stops = null,
        [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var tokenizer = engine.Tokenizer;
        if (tokenizer is null && stops is { Count: > 0 }) throw new InvalidOperationException("stop strings need a tokenizer; this model has none (use stop token ids).");
        var decoder = tokenizer is null ? null : new TokenStreamDecoder(tokenizer);
        var matcher = stops is { Count: > 0 } ? new StopTextMatcher(stops) : null;
        HashSet<int> unwritten = [.. engine.Config.EosTokenIds, .. request.Limits.StopTokens ?? []];
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        int generated = 0;
        await foreach (var e in engine.GenerateAsync(request, stop.Token).ConfigureAwait(false))
        {
            if (e.IsFinal)
            {
                if (matcher is { Stopped: false } && matcher.Flush() is { Length: > 0 } rest) yield return new TextEvent(rest, -1, null);
                yield return new TextEvent("", -1, matcher?.Stopped == true ? e.Summary! with { Reason = FinishReason.Stop, GeneratedTokens = generated } : e.Summary);
                yield break;
            }
            if (matcher?.Stopped == true) continue; // generated before the cancellation reached the scheduler
            generated++;
            bool written = !unwritten.Contains(e.Token);
            string text = written ? decoder?.Append(e.Token) ?? "" : "";
            if (matcher is not null)
            {
                text = matcher.Append(text);
                if (matcher.Stopped) await stop.CancelAsync().ConfigureAwait(false);
            }
            yield return new TextEvent(text, e.Token, null, written ? e.LogProbs : null);
        }
    }
}
