using System.Text;
using KvPacket.Engine.Serving;

namespace KvPacket.Daemon;

/// <summary>
/// One choice of a completion as it runs on the engine (<see cref="TextGeneration"/>: text with stop strings applied),
/// collecting its tokens, text and summary. <see cref="BeginAsync"/> waits for the first event, so a request the engine
/// refuses (unknown packet, overload, a mode it cannot run) fails before any byte is sent.
/// </summary>
internal sealed class CompletionChoice : IAsyncDisposable
{
    private readonly IAsyncEnumerator<TextEvent> _events;
    private TextEvent? _pending;

    public CompletionChoice(KvPacketEngine engine, int index, EngineRequest request, IReadOnlyList<string> stops, CancellationToken aborted)
    {
        Index = index;
        _events = engine.GenerateTextAsync(request, stops, aborted).GetAsyncEnumerator(aborted);
    }

    /// <summary>The choice's index in the response.</summary>
    public int Index { get; }

    /// <summary>Tokens generated up to the end (up to the one that completed a stop string).</summary>
    public List<int> Tokens { get; } = [];

    /// <summary>Each written token's log-probabilities, when the request asked for them.</summary>
    public List<(int Token, Engine.Sampling.TokenLogProbs LogProbs)> LogProbs { get; } = [];

    /// <summary>The completion's text, stop string left out.</summary>
    public StringBuilder Text { get; } = new();

    /// <summary>The engine's summary, once finished.</summary>
    public GenerationSummary? Summary { get; private set; }

    /// <summary>OpenAI's finish reason.</summary>
    public string FinishReason => (Summary?.Reason ?? Engine.Serving.FinishReason.Cancelled) switch
    {
        Engine.Serving.FinishReason.Stop => "stop",
        Engine.Serving.FinishReason.Length => "length",
        var other => other.ToString().ToLowerInvariant(),
    };

    /// <summary>Waits for the engine to accept the request and produce its first event.</summary>
    public async Task BeginAsync() => _pending = await NextAsync();

    /// <summary>Runs to the end; each piece of text (and the token that made it, or −1 for held-back text) goes to <paramref name="piece"/>.</summary>
    public async Task RunAsync(Func<CompletionChoice, string, int, Engine.Sampling.TokenLogProbs?, Task>? piece)
    {
        while ((_pending ?? await NextAsync()) is { } e)
        {
            _pending = null;
            if (e.IsFinal)
            {
                Summary = e.Summary;
                break;
            }
            if (e.Token >= 0) Tokens.Add(e.Token);
            if (e.LogProbs is { } logProbs) LogProbs.Add((e.Token, logProbs));
            Text.Append(e.Text);
            if (piece is not null && (e.Text.Length > 0 || e.Token >= 0)) await piece(this, e.Text, e.Token, e.LogProbs);
        }
        if (Summary?.Reason == Engine.Serving.FinishReason.Error) throw new ApiError(500, Summary.Error ?? "generation failed", "server_error", code: "internal_error");
    }

    private async Task<TextEvent?> NextAsync()
    {
        try { return await _events.MoveNextAsync() ? _events.Current : null; }
        catch (KeyNotFoundException e) { throw new ApiError(404, e.Message, param: "packets", code: "packet_not_found"); }
        catch (OverloadedException e) { throw new ApiError(429, e.Message, "rate_limit_error", code: "rate_limit_exceeded"); }
        catch (ArgumentException e) { throw new ApiError(400, e.Message); }
        catch (NotSupportedException e) { throw new ApiError(400, e.Message, param: "mode"); }
        catch (InvalidOperationException e) { throw new ApiError(400, e.Message, param: "mode"); }
    }

    public ValueTask DisposeAsync() => _events.DisposeAsync();
}
