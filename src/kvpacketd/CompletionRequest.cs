using System.Text.Json;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Engine.Serving;

namespace KvPacket.Daemon;

/// <summary>One prompt of a completion request: what the engine runs, and the prompt's text for <c>echo</c>.</summary>
/// <param name="Engine">The engine request of the prompt's first choice (the others differ only in their seed).</param>
/// <param name="Text">The prompt as text: as sent, or decoded from its ids (empty without a tokenizer).</param>
public sealed record CompletionPrompt(EngineRequest Engine, string Text);

/// <summary>
/// A parsed, validated <c>POST /v1/completions</c> body: OpenAI's fields plus <c>packets</c>, <c>documents</c>,
/// <c>mode</c> and <c>stop_token_ids</c>. Every field is checked for type and range, and a field that would change the
/// output but is not honoured here is refused with a 400 naming it; fields that do not affect generation (<c>user</c>)
/// are ignored, as OpenAI clients send more than a server uses.
/// </summary>
/// <param name="Prompts">The prompts (OpenAI's batched <c>prompt</c>: one or more).</param>
/// <param name="N">Choices per prompt; choice j of a prompt samples with seed <c>seed + j</c>.</param>
/// <param name="Echo">Return the prompt's text before each choice's completion.</param>
/// <param name="Stops">Stop strings, matched on the generated text and left out of it.</param>
/// <param name="Stream">Server-sent events instead of one JSON body.</param>
/// <param name="IncludeUsage">With <c>stream</c>: a last chunk carries the usage (<c>stream_options.include_usage</c>).</param>
public sealed record CompletionRequest(IReadOnlyList<CompletionPrompt> Prompts, int N, bool Echo, IReadOnlyList<string> Stops, bool Stream, bool IncludeUsage)
{
    /// <summary>Most stop strings a request may give (OpenAI's limit).</summary>
    public const int MaxStops = 4;

    /// <summary>Most choices one request may ask for (prompts × n).</summary>
    public const int MaxChoices = 128;

    /// <summary>
    /// Every choice in OpenAI's order (prompt by prompt, then j): its index and its engine request. The choices of one
    /// prompt form a <see cref="PromptGroup"/>, so the prompt is computed once.
    /// </summary>
    public IEnumerable<(int Index, CompletionPrompt Prompt, EngineRequest Engine)> Choices() => Prompts.SelectMany((prompt, i) =>
    {
        var shared = N > 1 ? prompt.Engine with { Group = new PromptGroup() } : prompt.Engine;
        return Enumerable.Range(0, N).Select(j => (i * N + j, prompt,
            shared with { Limits = shared.Limits with { Sampling = shared.Limits.Sampling with { Seed = shared.Limits.Sampling.Seed + (ulong)j } } }));
    });

    /// <summary>
    /// Parses <paramref name="body"/>; anything wrong is an <see cref="ApiError"/> naming the field. <paramref name="model"/>
    /// is the served model's name (a request naming another is a 404); <paramref name="packetMode"/> is the mode of a
    /// request with documents and no <c>mode</c>.
    /// </summary>
    /// <remarks>
    /// For <c>/v1/chat/completions</c>, <paramref name="chatPrompt"/> is the conversation rendered by the model's chat
    /// template: it is the one prompt, <c>prompt</c> is refused, and <c>max_completion_tokens</c> is read too.
    /// </remarks>
    public static CompletionRequest Parse(JsonElement body, ITokenizer? tokenizer, int bos, int maxTokens, int context, string model, RagMode packetMode, string? chatPrompt = null)
    {
        if (body.ValueKind != JsonValueKind.Object) throw new ApiError(400, "the body must be a JSON object.");
        if (body.TryGetProperty("model", out var named) && named.ValueKind != JsonValueKind.Null && Text(named, "model") != model)
            throw new ApiError(404, $"The model '{named.GetString()}' does not exist; this daemon serves '{model}'.", param: "model", code: "model_not_found");
        Refuse(body, chat: chatPrompt is not null);
        int max = chatPrompt is not null && body.TryGetProperty("max_completion_tokens", out var newer) && newer.ValueKind != JsonValueKind.Null
            ? Integer(body, "max_completion_tokens", 16) : Integer(body, "max_tokens", 16);
        if (max < 1 || max > maxTokens) throw ApiError.Field("max_tokens", $"'max_tokens' must be between 1 and {maxTokens}, not {max}.");
        double temperature = Number(body, "temperature", 1.0);
        if (temperature is < 0 or > 100) throw ApiError.Field("temperature", "'temperature' must be between 0 and 100.");
        double topP = Number(body, "top_p", 1.0);
        if (topP is <= 0 or > 1) throw ApiError.Field("top_p", "'top_p' must be in (0, 1].");
        int topK = Integer(body, "top_k", 0);
        if (topK < 0) throw ApiError.Field("top_k", "'top_k' must not be negative.");
        ulong seed = (ulong)Integer(body, "seed", 0);
        double presence = Number(body, "presence_penalty", 0), frequency = Number(body, "frequency_penalty", 0);
        if (presence is < -2 or > 2) throw ApiError.Field("presence_penalty", "'presence_penalty' must be between -2 and 2.");
        if (frequency is < -2 or > 2) throw ApiError.Field("frequency_penalty", "'frequency_penalty' must be between -2 and 2.");
        bool stream = Boolean(body, "stream", false);
        bool echo = Boolean(body, "echo", false);
        bool includeUsage = false;
        if (body.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind != JsonValueKind.Null)
        {
            if (streamOptions.ValueKind != JsonValueKind.Object) throw ApiError.Field("stream_options", "'stream_options' must be an object.");
            if (!stream) throw ApiError.Field("stream_options", "'stream_options' is only allowed with 'stream': true.");
            includeUsage = Boolean(streamOptions, "include_usage", false);
        }
        int n = Integer(body, "n", 1);
        if (n < 1) throw ApiError.Field("n", $"'n' must be at least 1, not {n}.");
        if (body.TryGetProperty("best_of", out var bestOf) && bestOf.ValueKind != JsonValueKind.Null && Integer(body, "best_of", n) != n)
            throw ApiError.Field("best_of", "'best_of' other than 'n' (generating extra choices and returning the likeliest) is not supported; leave it out.");

        var stops = new List<string>();
        if (body.TryGetProperty("stop", out var stop) && stop.ValueKind != JsonValueKind.Null)
        {
            if (tokenizer is null) throw ApiError.Field("stop", "'stop' strings need a tokenizer; this model has none (use 'stop_token_ids').");
            stops.AddRange((stop.ValueKind switch
            {
                JsonValueKind.String => [Text(stop, "stop")],
                JsonValueKind.Array => stop.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? Text(e, "stop") : throw ApiError.Field("stop", "'stop' must be a string or an array of strings.")).ToArray(),
                _ => throw ApiError.Field("stop", "'stop' must be a string or an array of strings."),
            }).Where(x => x.Length > 0));
            if (stops.Count > MaxStops) throw ApiError.Field("stop", $"'stop' may hold at most {MaxStops} strings, not {stops.Count}.");
        }
        int[]? stopIds = body.TryGetProperty("stop_token_ids", out var ids) ? TokenArray(ids, "stop_token_ids") : null;

        var packets = body.TryGetProperty("packets", out var pk)
            ? (pk.ValueKind == JsonValueKind.Array ? pk.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? Text(e, "packets") : throw ApiError.Field("packets", "'packets' must be an array of packet ids.")).ToArray()
                : throw ApiError.Field("packets", "'packets' must be an array of packet ids."))
            : [];
        var documents = body.TryGetProperty("documents", out var docs)
            ? (docs.ValueKind == JsonValueKind.Array ? docs.EnumerateArray().Select(d => Tokens(d, "documents", tokenizer, context)).ToArray() : throw ApiError.Field("documents", "'documents' must be an array."))
            : [];
        RagMode mode = packets.Length == 0 && documents.Length == 0 ? RagMode.Full : packetMode; // no documents: a plain completion
        if (body.TryGetProperty("mode", out var m) && m.ValueKind != JsonValueKind.Null)
        {
            string modeText = m.ValueKind == JsonValueKind.String ? Text(m, "mode") : throw ApiError.Field("mode", "'mode' must be a string.");
            if (!KvPacketEngine.TryParseMode(modeText, out mode))
                throw ApiError.Field("mode", $"'mode' must be one of full, naive, kvpacket, kvlink; not '{modeText}'.");
        }

        var limits = new GenerationLimits
        {
            LogProbs = LogProbs(body, chatPrompt is not null, echo),
            MaxTokens = max,
            Sampling = new SamplingOptions
            {
                Temperature = (float)temperature, TopP = (float)topP, TopK = topK, Seed = seed,
                PresencePenalty = (float)presence, FrequencyPenalty = (float)frequency, LogitBias = LogitBias(body),
            },
            StopTokens = stopIds,
        };
        var given = chatPrompt is null ? PromptsOf(body, tokenizer, context)
            : body.TryGetProperty("prompt", out _) ? throw ApiError.Field("prompt", "a chat completion takes 'messages', not 'prompt'.")
            : [(TextTokens(chatPrompt, "messages", tokenizer!, context), chatPrompt)];
        var prompts = given.Select(p =>
        {
            int[] tokens = p.Tokens.Length > 0 && p.Tokens[0] == bos ? p.Tokens[1..] : p.Tokens; // BOS goes first, before any documents
            if (tokens.Length == 0) throw ApiError.Field("prompt", "'prompt' must not be empty (beyond BOS).");
            var engine = new EngineRequest { Prefix = [bos], Packets = packets, Documents = documents, Prompt = tokens, Mode = mode, Limits = limits };
            return new CompletionPrompt(engine, p.Text ?? (tokenizer is null ? "" : tokenizer.Decode(p.Tokens)));
        }).ToArray();
        if ((long)prompts.Length * n > MaxChoices) throw ApiError.Field("n", $"{prompts.Length} prompt(s) × n = {n} is more than {MaxChoices} choices.");
        return new CompletionRequest(prompts, n, echo, stops, stream, includeUsage);
    }

    /// <summary>
    /// OpenAI fields that change what is generated and are not honoured here: a request that sets one to anything but
    /// its neutral value is refused, never answered as if it had not been sent.
    /// </summary>
    private static void Refuse(JsonElement body, bool chat)
    {
        if (chat)
        {
            foreach (string field in new[] { "tools", "functions", "function_call", "audio", "prediction" })
                if (body.TryGetProperty(field, out var value) && value.ValueKind != JsonValueKind.Null && !(value.ValueKind == JsonValueKind.Array && value.GetArrayLength() == 0))
                    throw ApiError.Field(field, $"'{field}' is not supported; leave it out.");
            if (body.TryGetProperty("tool_choice", out var choice) && choice.ValueKind != JsonValueKind.Null && !(choice.ValueKind == JsonValueKind.String && choice.GetString() == "none"))
                throw ApiError.Field("tool_choice", "'tool_choice' is not supported (this server has no tools); leave it out or send \"none\".");
            if (body.TryGetProperty("response_format", out var format) && format.ValueKind != JsonValueKind.Null
                && !(format.ValueKind == JsonValueKind.Object && format.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "text"))
                throw ApiError.Field("response_format", "only 'response_format' {\"type\": \"text\"} is supported.");
        }
        if (body.TryGetProperty("suffix", out var suffix) && suffix.ValueKind != JsonValueKind.Null && !(suffix.ValueKind == JsonValueKind.String && suffix.GetString() is ""))
            throw ApiError.Field("suffix", "'suffix' (insertion) is not supported; leave it out.");
    }

    /// <summary>OpenAI's <c>logit_bias</c>: token ids (as the object's keys) to a bias between −100 and 100.</summary>
    private static Dictionary<int, float>? LogitBias(JsonElement body)
    {
        if (!body.TryGetProperty("logit_bias", out var bias) || bias.ValueKind == JsonValueKind.Null) return null;
        if (bias.ValueKind != JsonValueKind.Object) throw ApiError.Field("logit_bias", "'logit_bias' must be an object of token ids to biases.");
        var biases = new Dictionary<int, float>();
        foreach (var entry in bias.EnumerateObject())
        {
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int token))
                throw ApiError.Field("logit_bias", $"'logit_bias' key '{entry.Name}' is not a token id of this model.");
            if (entry.Value.ValueKind != JsonValueKind.Number || entry.Value.GetDouble() is < -100 or > 100)
                throw ApiError.Field("logit_bias", $"'logit_bias' for token {token} must be a number between -100 and 100.");
            biases[token] = (float)entry.Value.GetDouble();
        }
        return biases.Count == 0 ? null : biases;
    }

    /// <summary>
    /// How many alternatives each token's log-probabilities list (null: none): the completions API's <c>logprobs</c>
    /// (0 to 5), or chat's <c>logprobs: true</c> with <c>top_logprobs</c> (0 to 20).
    /// </summary>
    private static int? LogProbs(JsonElement body, bool chat, bool echo)
    {
        int? top;
        if (chat)
        {
            bool wanted = Boolean(body, "logprobs", false);
            bool alternatives = body.TryGetProperty("top_logprobs", out var t) && t.ValueKind != JsonValueKind.Null;
            if (alternatives && !wanted) throw ApiError.Field("top_logprobs", "'top_logprobs' needs 'logprobs': true.");
            top = wanted ? Integer(body, "top_logprobs", 0) : null;
            if (top is < 0 or > TokenLogProbs.MaxTop) throw ApiError.Field("top_logprobs", $"'top_logprobs' must be between 0 and {TokenLogProbs.MaxTop}.");
            return top;
        }
        if (!body.TryGetProperty("logprobs", out var value) || value.ValueKind == JsonValueKind.Null) return null;
        top = Integer(body, "logprobs", 0);
        if (top is < 0 or > 5) throw ApiError.Field("logprobs", "'logprobs' must be between 0 and 5.");
        if (echo) throw ApiError.Field("logprobs", "'logprobs' with 'echo' (the prompt's log-probabilities) is not supported; send one of them.");
        return top;
    }

    /// <summary>
    /// OpenAI's <c>prompt</c>: a string, an array of token ids, or an array of either (a batch, one prompt each).
    /// </summary>
    private static IEnumerable<(int[] Tokens, string? Text)> PromptsOf(JsonElement body, ITokenizer? tokenizer, int context)
    {
        if (!body.TryGetProperty("prompt", out var prompt) || prompt.ValueKind == JsonValueKind.Null) throw ApiError.Field("prompt", "'prompt' is required.");
        if (prompt.ValueKind == JsonValueKind.Array && prompt.GetArrayLength() > 0 && prompt[0].ValueKind is JsonValueKind.String or JsonValueKind.Array)
            return prompt.EnumerateArray().Select(p => p.ValueKind == prompt[0].ValueKind
                ? (Tokens(p, "prompt", tokenizer, context), p.ValueKind == JsonValueKind.String ? p.GetString() : null)
                : throw ApiError.Field("prompt", "a batched 'prompt' holds strings or arrays of token ids, not a mixture.")).ToArray();
        return [(Tokens(prompt, "prompt", tokenizer, context), prompt.ValueKind == JsonValueKind.String ? Text(prompt, "prompt") : null)];
    }

    /// <summary>
    /// Text (tokenized) or an array of token ids. Text so long that it could not fit in <paramref name="context"/> tokens
    /// even if every token were the vocabulary's longest is refused before it is tokenized: a megabyte "word" would cost
    /// the tokenizer a hundred megabytes for nothing.
    /// </summary>
    public static int[] Tokens(JsonElement value, string field, ITokenizer? tokenizer, int context) => value.ValueKind switch
    {
        JsonValueKind.String when tokenizer is not null => TextTokens(Text(value, field), field, tokenizer, context),
        JsonValueKind.String => throw ApiError.Field(field, $"'{field}' is text but this model has no tokenizer: send token ids."),
        JsonValueKind.Array => TokenArray(value, field),
        _ => throw ApiError.Field(field, $"'{field}' must be a string or an array of token ids."),
    };

    private static int[] TextTokens(string text, string field, ITokenizer tokenizer, int context) => text.Length > (long)context * LongestToken(tokenizer)
        ? throw ApiError.Field(field, $"'{field}' has {text.Length} characters, more than {context} tokens (the model's context) can hold.")
        : tokenizer.Encode(text);

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
        if (value.ValueKind != JsonValueKind.Array) throw ApiError.Field(field, $"'{field}' must be an array of token ids.");
        return value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 ? id
            : throw ApiError.Field(field, $"'{field}' must hold non-negative integer token ids.")).ToArray();
    }

    /// <summary>A JSON string as text; one with invalid UTF-8 or an escaped lone surrogate has no UTF-16 form and is refused, naming the field.</summary>
    public static string Text(JsonElement value, string field)
    {
        if (value.ValueKind != JsonValueKind.String) throw ApiError.Field(field, $"'{field}' must be a string.");
        try { return value.GetString()!; }
        catch (InvalidOperationException) { throw ApiError.Field(field, $"'{field}' is not valid text (invalid UTF-8, or an escaped lone surrogate)."); }
    }

    private static int Integer(JsonElement body, string field, int fallback)
    {
        if (!body.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) return fallback;
        return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int n) ? n : throw ApiError.Field(field, $"'{field}' must be an integer.");
    }

    private static double Number(JsonElement body, string field, double fallback)
    {
        if (!body.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) return fallback;
        return value.ValueKind == JsonValueKind.Number ? value.GetDouble() : throw ApiError.Field(field, $"'{field}' must be a number.");
    }

    private static bool Boolean(JsonElement body, string field, bool fallback)
    {
        if (!body.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) return fallback;
        return value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean() : throw ApiError.Field(field, $"'{field}' must be true or false.");
    }
}
