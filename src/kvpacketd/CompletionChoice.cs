using System.Text;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Serving;

namespace KvPacket.Daemon;

/// <summary>
/// One choice of a completion as it runs on the engine: its tokens, its text with the stop strings applied (generation
/// is cancelled where the text first holds one), and the engine's summary. <see cref="BeginAsync"/> waits for the first
/// event, so a request the engine refuses (unknown packet, overload, bad mode) fails before any byte is sent.
/// </summary>
internal sealed class CompletionChoice : IAsyncDisposable
{
    private readonly CancellationTokenSource _cancel;
    private readonly IAsyncEnumerator<GenerationEvent> _events;
    private readonly TokenStreamDecoder? _decoder;
    private readonly StopTextMatcher? _stops;
    private readonly HashSet<int> _unwritten;
    private GenerationEvent? _pending;

    public CompletionChoice(KvPacketEngine engine, int index, EngineRequest request, ITokenizer? tokenizer, IReadOnlyList<string> stops, CancellationToken aborted)
    {
        Index = index;
        _cancel = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        _decoder = tokenizer is null ? null : new TokenStreamDecoder(tokenizer);
        _stops = stops.Count > 0 ? new StopTextMatcher(stops) : null;
        // An end-of-sequence or stop token ends the text; it is counted and listed, never written into it.
        _unwritten = [.. engine.Config.EosTokenIds, .. request.Limits.StopTokens ?? []];
        _events = engine.GenerateAsync(request, _cancel.Token).GetAsyncEnumerator(_cancel.Token);
    }

    /// <summary>The choice's index in the response.</summary>
    public int Index { get; }

    /// <summary>Tokens generated up to the end (up to the one that completed a stop string).</summary>
    public List<int> Tokens { get; } = [];

    /// <summary>The completion's text, stop string left out.</summary>
    public StringBuilder Text { get; } = new();

    /// <summary>The engine's summary, once finished.</summary>
    public GenerationSummary? Summary { get; private set; }

    /// <summary>OpenAI's finish reason.</summary>
    public string FinishReason => _stops?.Stopped == true ? "stop" : (Summary?.Reason ?? Engine.Serving.FinishReason.Cancelled) switch
    {
        Engine.Serving.FinishReason.Stop => "stop",
        Engine.Serving.FinishReason.Length => "length",
        var other => other.ToString().ToLowerInvariant(),
    };

    /// <summary>Waits for the engine to accept the request and produce its first event.</summary>
    public async Task BeginAsync() => _pending = await NextAsync();

    /// <summary>Runs to the end; each piece of text (and the token that made it, or −1 for held-back text) goes to <paramref name="piece"/>.</summary>
    public async Task RunAsync(Func<CompletionChoice, string, int, Task>? piece)
    {
        while ((_pending ?? await NextAsync()) is { } e)
        {
            _pending = null;
            if (e.IsFinal)
            {
                Summary = e.Summary;
                break;
            }
            if (_stops?.Stopped == true) continue; // generated before the cancellation reached the scheduler
            Tokens.Add(e.Token);
            string text = _unwritten.Contains(e.Token) ? "" : _decoder?.Append(e.Token) ?? "";
            if (_stops is not null)
            {
                text = _stops.Append(text);
                if (_stops.Stopped) await _cancel.CancelAsync();
            }
            Text.Append(text);
            if (piece is not null) await piece(this, text, e.Token);
        }
        if (_stops is { Stopped: false } && _stops.Flush() is { Length: > 0 } rest)
        {
            Text.Append(rest);
            if (piece is not null) await piece(this, rest, -1);
        }
        if (Summary?.Reason == Engine.Serving.FinishReason.Error) throw new ApiError(500, Summary.Error ?? "generation failed", "server_error", code: "internal_error");
    }

    private async Task<GenerationEvent?> NextAsync()
    {
        try { return await _events.MoveNextAsync() ? _events.Current : null; }
        catch (KeyNotFoundException e) { throw new ApiError(404, e.Message, param: "packets", code: "packet_not_found"); }
        catch (OverloadedException e) { throw new ApiError(429, e.Message, "rate_limit_error", code: "rate_limit_exceeded"); }
        catch (ArgumentException e) { throw new ApiError(400, e.Message); }
        catch (NotSupportedException e) { throw new ApiError(400, e.Message, param: "mode"); }
        catch (InvalidOperationException e) { throw new ApiError(400, e.Message, param: "mode"); }
    }

    public async ValueTask DisposeAsync()
    {
        await _events.DisposeAsync();
        _cancel.Dispose();
    }
}
