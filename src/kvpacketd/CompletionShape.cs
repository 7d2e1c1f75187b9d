using KvPacket.Core.Tokenization;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;

namespace KvPacket.Daemon;

/// <summary>
/// The JSON of one response in OpenAI's two shapes: a text completion (<c>text_completion</c>, <c>choices[].text</c>)
/// or a chat completion (<c>chat.completion</c>, <c>choices[].message</c>; streamed as <c>chat.completion.chunk</c> deltas
/// after a first chunk with the role). Both carry our <c>tokens</c> and <c>kvpacket</c> figures per choice.
/// </summary>
internal sealed class CompletionShape(bool chat, string model, RagMode mode, bool logProbs, ITokenizer? tokenizer)
{
    private readonly string _id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N")[..24];
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private string ChunkKind => chat ? "chat.completion.chunk" : "text_completion";

    /// <summary>The first chunk of a streamed choice (chat only: the assistant's role), or null.</summary>
    public object? Opening(int index) => !chat ? null
        : Envelope(new { index, delta = new { role = "assistant", content = "" }, logprobs = (object?)null, finish_reason = (string?)null });

    /// <summary>A streamed piece of a choice's text, with its token and log-probabilities (offset: where the piece starts in the text).</summary>
    public object Piece(int index, string text, int token, TokenLogProbs? tokenLogProbs, int offset)
    {
        int[] tokens = token < 0 ? [] : [token];
        var logprobs = tokenLogProbs is null ? null : LogProbs([(token, tokenLogProbs)], offset);
        return Envelope(chat ? new { index, delta = new { content = text }, tokens, logprobs, finish_reason = (string?)null }
            : new { index, text, tokens, logprobs, finish_reason = (string?)null });
    }

    /// <summary>The last chunk of a streamed choice: its finish reason and our figures.</summary>
    public object Finish(CompletionChoice choice) => Envelope(chat
        ? new { index = choice.Index, delta = new { }, tokens = Array.Empty<int>(), logprobs = (object?)null, finish_reason = choice.FinishReason, kvpacket = Extension(choice) }
        : new { index = choice.Index, text = "", tokens = Array.Empty<int>(), logprobs = (object?)null, finish_reason = choice.FinishReason, kvpacket = Extension(choice) });

    /// <summary>The streamed usage chunk (<c>stream_options.include_usage</c>): no choices.</summary>
    public object Usage(object usage) => new { id = _id, @object = ChunkKind, created = _created, model, choices = Array.Empty<object>(), usage };

    /// <summary>The whole response: each choice with the text put before its own (the prompt's with echo, else null).</summary>
    public object Body(IEnumerable<(CompletionChoice Choice, string? Echo)> choices, object usage) => new
    {
        id = _id, @object = chat ? "chat.completion" : "text_completion", created = _created, model,
        choices = choices.Select(c => chat
            ? (object)new
            {
                index = c.Choice.Index, message = new { role = "assistant", content = c.Choice.Text.ToString() }, tokens = c.Choice.Tokens,
                logprobs = LogProbs(c.Choice.LogProbs, 0), finish_reason = c.Choice.FinishReason, kvpacket = Extension(c.Choice),
            }
            : new
            {
                index = c.Choice.Index, text = c.Echo + c.Choice.Text, tokens = c.Choice.Tokens,
                logprobs = LogProbs(c.Choice.LogProbs, 0), finish_reason = c.Choice.FinishReason, kvpacket = Extension(c.Choice),
            }),
        usage,
    };

    private object Envelope(object choice) => new { id = _id, @object = ChunkKind, created = _created, model, choices = new[] { choice } };

    private object? LogProbs(IReadOnlyList<(int, TokenLogProbs)> items, int offset) => !logProbs || tokenizer is null ? null
        : chat ? OpenAiLogProbs.Chat(items, tokenizer) : OpenAiLogProbs.Completion(items, tokenizer, offset);

    /// <summary>Our figures for a choice: the mode it ran in, its time to first token, and what its prompt cost.</summary>
    private object? Extension(CompletionChoice choice) => choice.Summary is not { } summary ? null : new
    {
        mode = mode.ToString().ToLowerInvariant(), ttft_ms = summary.TimeToFirstTokenSeconds * 1e3, computed_prompt_tokens = summary.PromptTokens,
        packet_tokens = summary.PacketTokens, preemptions = summary.Preemptions,
    };
}
