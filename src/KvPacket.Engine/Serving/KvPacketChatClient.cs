using System.Runtime.CompilerServices;
using System.Text;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using Microsoft.Extensions.AI;

namespace KvPacket.Engine.Serving;

/// <summary>
/// A <see cref="KvPacketEngine"/> in process as .NET's <see cref="IChatClient"/>: messages go through the model's chat
/// template, and retrieved documents ride in <see cref="ChatOptions.AdditionalProperties"/> — <c>"packets"</c> (packet
/// ids), <c>"documents"</c> (texts) and <c>"mode"</c> (full, naive, kvpacket, kvlink; default: kvpacket when the engine
/// has an adapter with header or trailer tokens, kvlink when it has links, else naive). Temperature, top-p, top-k, seed,
/// frequency and presence penalties, maximum output tokens and stop sequences are honoured; tools and structured output
/// are refused with <see cref="NotSupportedException"/>.
/// <code>
/// await using var engine = await KvPacketEngine.LoadAsync("models/kvqa-17m");
/// var doc = await engine.AddPacketAsync("Document: Vosk\nThe city of Vosk lies in the region of Tarrel.\n\n");
/// IChatClient chat = new KvPacketChatClient(engine);
/// var options = new ChatOptions { Temperature = 0, AdditionalProperties = new() { ["packets"] = new[] { doc.Id } } };
/// Console.WriteLine(await chat.GetResponseAsync("Which region does Vosk lie in?", options));
/// </code>
/// </summary>
/// <param name="engine">The engine (not owned: disposing the client leaves it running).</param>
/// <param name="modelId">The model's name in responses and metadata.</param>
public sealed class KvPacketChatClient(KvPacketEngine engine, string modelId = "kvpacket") : IChatClient
{
    /// <summary>The <see cref="ChatOptions.AdditionalProperties"/> key of packet ids (strings).</summary>
    public const string PacketsKey = "packets";
    /// <summary>The key of documents given as text (strings), encoded for this request.</summary>
    public const string DocumentsKey = "documents";
    /// <summary>The key of the RAG mode (a string or a <see cref="RagMode"/>).</summary>
    public const string ModeKey = "mode";

    private readonly ChatClientMetadata _metadata = new("kvpacket", defaultModelId: modelId);

    /// <inheritdoc/>
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var text = new StringBuilder();
        ChatResponseUpdate? last = null;
        await foreach (var update in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
        {
            text.Append(update.Text);
            last = update;
        }
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text.ToString()))
        {
            ResponseId = last?.ResponseId, ModelId = last?.ModelId, CreatedAt = last?.CreatedAt, FinishReason = last?.FinishReason,
            Usage = last?.Contents.OfType<UsageContent>().FirstOrDefault()?.Details,
        };
    }

    /// <inheritdoc/>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = Request(messages, options);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N")[..24];
        var created = DateTimeOffset.UtcNow;
        await foreach (var e in engine.GenerateTextAsync(request, options?.StopSequences as IReadOnlyList<string> ?? options?.StopSequences?.ToList(), cancellationToken).ConfigureAwait(false))
        {
            if (!e.IsFinal)
            {
                if (e.Text.Length > 0) yield return new ChatResponseUpdate(ChatRole.Assistant, e.Text) { ResponseId = id, MessageId = id, ModelId = _metadata.DefaultModelId, CreatedAt = created };
                continue;
            }
            var summary = e.Summary!;
            if (summary.Reason == FinishReason.Error) throw new InvalidOperationException(summary.Error ?? "generation failed");
            cancellationToken.ThrowIfCancellationRequested();
            int prompt = summary.PromptTokens + summary.PacketTokens;
            yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(new UsageDetails { InputTokenCount = prompt, OutputTokenCount = summary.GeneratedTokens, TotalTokenCount = prompt + summary.GeneratedTokens })])
            {
                ResponseId = id, MessageId = id, ModelId = _metadata.DefaultModelId, CreatedAt = created,
                FinishReason = summary.Reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop,
            };
        }
    }

    /// <summary>The engine request of a conversation: its rendered prompt, documents, mode and sampling.</summary>
    private EngineRequest Request(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var tokenizer = engine.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer: use KvPacketEngine.GenerateAsync with token ids.");
        var template = engine.ChatTemplate ?? throw new InvalidOperationException("this model has no chat template (no chat_template in its tokenizer_config.json).");
        if (options is { Tools.Count: > 0 }) throw new NotSupportedException("tools are not supported.");
        if (options?.ResponseFormat is not null and not ChatResponseFormatText) throw new NotSupportedException("only the text response format is supported.");
        var conversation = messages.Select(m => new Core.Tokenization.ChatMessage(m.Role.Value, m.Text)).ToList();
        int[] prompt = tokenizer.Encode(template.Render(conversation));
        int bos = engine.Config.BosTokenId ?? 1;
        if (prompt.Length > 0 && prompt[0] == bos) prompt = prompt[1..]; // BOS goes first, before any documents
        var extra = options?.AdditionalProperties;
        string[] packets = extra?.TryGetValue(PacketsKey, out var ids) == true ? ids switch
        {
            IEnumerable<string> list => [.. list],
            string one => [one],
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{PacketsKey}\"] must be packet ids (strings)."),
        } : [];
        int[][] documents = extra?.TryGetValue(DocumentsKey, out var docs) == true ? docs switch
        {
            IEnumerable<string> list => [.. list.Select(d => tokenizer.Encode(d))],
            string one => [tokenizer.Encode(one)],
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{DocumentsKey}\"] must be texts (strings)."),
        } : [];
        var mode = extra?.TryGetValue(ModeKey, out var named) == true ? named switch
        {
            RagMode m => m,
            string s when KvPacketEngine.TryParseMode(s, out var m) => m,
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{ModeKey}\"] must be full, naive, kvpacket or kvlink."),
        } : packets.Length + documents.Length == 0 ? RagMode.Full : engine.DefaultPacketMode;
        return new EngineRequest
        {
            Prefix = [bos], Packets = packets, Documents = documents, Prompt = prompt, Mode = mode,
            Limits = new GenerationLimits
            {
                MaxTokens = options?.MaxOutputTokens ?? 256,
                Sampling = new SamplingOptions
                {
                    Temperature = options?.Temperature ?? 1f, TopP = options?.TopP ?? 1f, TopK = options?.TopK ?? 0, Seed = (ulong)(options?.Seed ?? 0),
                    FrequencyPenalty = options?.FrequencyPenalty ?? 0, PresencePenalty = options?.PresencePenalty ?? 0,
                },
            },
        };
    }

    /// <inheritdoc/>
    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? _metadata
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(engine) ? engine
        : null;

    /// <summary>The engine is not the client's: disposing the client leaves it running.</summary>
    public void Dispose() { }
}
