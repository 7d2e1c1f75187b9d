using System.Text.Json;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Engine.Serving;

namespace KvPacket.Daemon;

/// <summary>
/// A parsed, validated <c>POST /v1/completions</c> body (OpenAI's fields plus <c>packets</c>, <c>documents</c>,
/// <c>mode</c> and <c>stop_token_ids</c>). Every field is checked for type and range; unknown fields are ignored, as
/// OpenAI clients send more than a server uses.
/// </summary>
public sealed record CompletionRequest(EngineRequest Engine, bool Stream)
{
    /// <summary>Parses <paramref name="body"/>; anything wrong is an <see cref="ApiError"/> (400) naming the field.</summary>
    public static CompletionRequest Parse(JsonElement body, ITokenizer? tokenizer, int bos, int maxTokens, int context)
    {
        if (body.ValueKind != JsonValueKind.Object) throw new ApiError(400, "the body must be a JSON object.");
        int[] prompt = body.TryGetProperty("prompt", out var p) ? Tokens(p, "prompt", tokenizer, context) : throw new ApiError(400, "'prompt' is required.");
        if (prompt.Length > 0 && prompt[0] == bos) prompt = prompt[1..]; // BOS goes first, before any documents
        if (prompt.Length == 0) throw new ApiError(400, "'prompt' must not be empty (beyond BOS).");
        int max = Integer(body, "max_tokens", 16);
        if (max < 1 || max > maxTokens) throw new ApiError(400, $"'max_tokens' must be between 1 and {maxTokens}, not {max}.");
        double temperature = Number(body, "temperature", 1.0);
        if (temperature is < 0 or > 100) throw new ApiError(400, "'temperature' must be between 0 and 100.");
        double topP = Number(body, "top_p", 1.0);
        if (topP is <= 0 or > 1) throw new ApiError(400, "'top_p' must be in (0, 1].");
        int topK = Integer(body, "top_k", 0);
        if (topK < 0) throw new ApiError(400, "'top_k' must not be negative.");
        ulong seed = (ulong)Integer(body, "seed", 0);
        bool stream = body.TryGetProperty("stream", out var s) && (s.ValueKind is JsonValueKind.True or JsonValueKind.False ? s.GetBoolean() : throw new ApiError(400, "'stream' must be true or false."));

        var stops = new List<int[]>();
        if (body.TryGetProperty("stop", out var stop) && stop.ValueKind != JsonValueKind.Null)
        {
            if (tokenizer is null) throw new ApiError(400, "'stop' strings need a tokenizer; this model has none (use 'stop_token_ids').");
            var strings = stop.ValueKind switch
            {
                JsonValueKind.String => [Text(stop, "stop")],
                JsonValueKind.Array => stop.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? Text(e, "stop[]") : throw new ApiError(400, "'stop' must be a string or an array of strings.")).ToArray(),
                _ => throw new ApiError(400, "'stop' must be a string or an array of strings."),
            };
            stops.AddRange(strings.Where(x => x.Length > 0).Select(x => tokenizer.Encode(x)));
        }
        int[]? stopIds = body.TryGetProperty("stop_token_ids", out var ids) ? TokenArray(ids, "stop_token_ids") : null;

        string modeText = body.TryGetProperty("mode", out var m) ? (m.ValueKind == JsonValueKind.String ? Text(m, "mode") : throw new ApiError(400, "'mode' must be a string.")) : "kvpacket";
        if (!Enum.TryParse<RagMode>(modeText, ignoreCase: true, out var mode) || mode is RagMode.Epic or RagMode.CacheBlend)
            throw new ApiError(400, $"'mode' must be one of full, naive, kvpacket, kvlink; not '{modeText}'.");
        var packets = body.TryGetProperty("packets", out var pk)
            ? (pk.ValueKind == JsonValueKind.Array ? pk.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? Text(e, "packets[]") : throw new ApiError(400, "'packets' must be an array of packet ids.")).ToArray()
                : throw new ApiError(400, "'packets' must be an array of packet ids."))
            : [];
        var documents = body.TryGetProperty("documents", out var docs)
            ? (docs.ValueKind == JsonValueKind.Array ? docs.EnumerateArray().Select(d => Tokens(d, "documents[]", tokenizer, context)).ToArray() : throw new ApiError(400, "'documents' must be an array."))
            : [];
        if (packets.Length == 0 && documents.Length == 0 && mode != RagMode.Full) mode = RagMode.Full; // no documents: a plain completion

        var limits = new GenerationLimits
        {
            MaxTokens = max,
            Sampling = new SamplingOptions { Temperature = (float)temperature, TopP = (float)topP, TopK = topK, Seed = seed },
            StopTokens = stopIds,
            StopSequences = stops,
        };
        return new CompletionRequest(new EngineRequest { Prefix = [bos], Packets = packets, Documents = documents, Prompt = prompt, Mode = mode, Limits = limits }, stream);
    }

    /// <summary>
    /// Text (tokenized) or an array of token ids. Text so long that it could not fit in <paramref name="context"/> tokens
    /// even if every token were the vocabulary's longest is refused before it is tokenized: a megabyte "word" would cost
    /// the tokenizer a hundred megabytes for nothing.
    /// </summary>
    public static int[] Tokens(JsonElement value, string field, ITokenizer? tokenizer, int context) => value.ValueKind switch
    {
        JsonValueKind.String when tokenizer is not null => Text(value, field) is var text && text.Length > (long)context * LongestToken(tokenizer)
            ? throw new ApiError(400, $"'{field}' has {text.Length} characters, more than {context} tokens (the model's context) can hold.")
            : tokenizer.Encode(text),
        JsonValueKind.String => throw new ApiError(400, $"'{field}' is text but this model has no tokenizer: send token ids."),
        JsonValueKind.Array => TokenArray(value, field),
        _ => throw new ApiError(400, $"'{field}' must be a string or an array of token ids."),
    };

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ITokenizer, object> Longest = [];

    /// <summary>The most characters one token can stand for: its UTF-8 bytes, at least one per character.</summary>
    private static int LongestToken(ITokenizer tokenizer) => (int)Longest.GetValue(tokenizer, t =>
    {
        int longest = 1;
        for (int id = 0; id < t.VocabSize; id++) longest = Math.Max(longest, t.TokenBytes(id).Length);
        return longest + 1;   // SentencePiece's dummy prefix: one more character than its bytes
    });

    private static int[] TokenArray(JsonElement value, string field)
    {
        if (value.ValueKind != JsonValueKind.Array) throw new ApiError(400, $"'{field}' must be an array of token ids.");
        return value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 ? id
            : throw new ApiError(400, $"'{field}' must hold non-negative integer token ids.")).ToArray();
    }

    /// <summary>A JSON string as text; one with invalid UTF-8 or an escaped lone surrogate has no UTF-16 form and is refused, naming the field.</summary>
    public static string Text(JsonElement value, string field)
    {
        try { return value.GetString()!; }
        catch (InvalidOperationException) { throw new ApiError(400, $"'{field}' is not valid text (invalid UTF-8, or an escaped lone surrogate)."); }
    }

    private static int Integer(JsonElement body, string field, int fallback)
    {
        if (!body.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) return fallback;
        return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int n) ? n : throw new ApiError(400, $"'{field}' must be an integer.");
    }

    private static double Number(JsonElement body, string field, double fallback)
    {
        if (!body.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) return fallback;
        return value.ValueKind == JsonValueKind.Number ? value.GetDouble() : throw new ApiError(400, $"'{field}' must be a number.");
    }
}
