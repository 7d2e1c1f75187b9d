using System.Text.Json;

namespace KvPacket.Core.Tokenization;

/// <summary>One message of a conversation.</summary>
/// <param name="Role">system, user, assistant (or what the template knows).</param>
/// <param name="Content">The message's text.</param>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// A model's chat template: the <c>chat_template</c> of its <c>tokenizer_config.json</c> (a Jinja template, rendered
/// by <see cref="JinjaTemplate"/>) with the file's <c>bos_token</c> and <c>eos_token</c>, turning messages into the
/// prompt text the model was trained on.
/// </summary>
public sealed class ChatTemplate
{
    private readonly JinjaTemplate _template;
    private readonly string _bos, _eos;

    /// <summary>A template from its source and the special tokens' text.</summary>
    public ChatTemplate(string source, string bosToken = "", string eosToken = "")
    {
        Source = source;
        _template = JinjaTemplate.Parse(source);
        (_bos, _eos) = (bosToken, eosToken);
    }

    /// <summary>The template's Jinja source.</summary>
    public string Source { get; }

    /// <summary>
    /// The template in the <c>tokenizer_config.json</c> beside a checkpoint (its directory, or its file's), or null when
    /// there is no such file or it has no <c>chat_template</c>. A file that is not valid JSON, or a template that does not
    /// parse, is a <see cref="FormatException"/> naming the file.
    /// </summary>
    public static ChatTemplate? TryLoadNextTo(string checkpointPath)
    {
        string path = Path.Combine(TokenizerLoader.DirectoryOf(checkpointPath), "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = json.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("chat_template", out var template) || template.ValueKind == JsonValueKind.Null) return null;
            string source = template.ValueKind switch
            {
                JsonValueKind.String => template.GetString()!,
                // Several named templates: the one named "default" is for chat.
                JsonValueKind.Array => template.EnumerateArray().FirstOrDefault(t => t.TryGetProperty("name", out var n) && n.GetString() == "default") is { ValueKind: JsonValueKind.Object } named
                    ? named.GetProperty("template").GetString()! : throw new FormatException("chat_template: a list without a template named 'default'"),
                _ => throw new FormatException("chat_template: must be a string or a list of {name, template}"),
            };
            return new ChatTemplate(source, SpecialToken(root, "bos_token"), SpecialToken(root, "eos_token"));
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or KeyNotFoundException)
        {
            throw new FormatException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>
    /// The prompt text of <paramref name="messages"/>, ending with the start of the assistant's turn when
    /// <paramref name="addGenerationPrompt"/>. A template that refuses the conversation (<c>raise_exception</c>) throws
    /// <see cref="InvalidOperationException"/> with its message.
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true) => _template.Render(new Dictionary<string, object?>
    {
        ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
        ["add_generation_prompt"] = addGenerationPrompt,
        ["bos_token"] = _bos,
        ["eos_token"] = _eos,
    });

    /// <summary>A special token's text: a string, or an object with <c>content</c> (older files).</summary>
    private static string SpecialToken(JsonElement root, string name) => !root.TryGetProperty(name, out var token) ? "" : token.ValueKind switch
    {
        JsonValueKind.String => token.GetString()!,
        JsonValueKind.Object when token.TryGetProperty("content", out var content) => content.GetString() ?? "",
        _ => "",
    };
}
