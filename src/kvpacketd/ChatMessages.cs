using System.Text;
using System.Text.Json;
using KvPacket.Core.Tokenization;

namespace KvPacket.Daemon;

/// <summary>The <c>messages</c> of a chat completion request, checked and rendered to prompt text by the model's template.</summary>
internal static class ChatMessages
{
    /// <summary>Most messages one request may hold.</summary>
    public const int MaxMessages = 1024;

    /// <summary>The prompt text of <paramref name="body"/>'s messages; anything wrong (or refused by the template) is a 400 naming <c>messages</c>.</summary>
    public static string Render(JsonElement body, ChatTemplate template)
    {
        if (!body.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw ApiError.Field("messages", "'messages' must be a non-empty array of {role, content}.");
        if (messages.GetArrayLength() > MaxMessages) throw ApiError.Field("messages", $"'messages' may hold at most {MaxMessages} messages.");
        var parsed = messages.EnumerateArray().Select((m, i) => Message(m, i)).ToList();
        try { return template.Render(parsed); }
        catch (InvalidOperationException e) { throw ApiError.Field("messages", e.Message); }
    }

    private static ChatMessage Message(JsonElement message, int index)
    {
        string at = $"messages[{index}]";
        if (message.ValueKind != JsonValueKind.Object) throw ApiError.Field("messages", $"'{at}' must be an object with 'role' and 'content'.");
        string role = message.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? CompletionRequest.Text(r, "messages")
            : throw ApiError.Field("messages", $"'{at}.role' must be a string.");
        if (message.TryGetProperty("tool_calls", out var calls) && calls.ValueKind != JsonValueKind.Null)
            throw ApiError.Field("messages", $"'{at}.tool_calls': tool calls are not supported.");
        if (!message.TryGetProperty("content", out var content)) throw ApiError.Field("messages", $"'{at}.content' is required.");
        return new ChatMessage(role, content.ValueKind switch
        {
            JsonValueKind.String => CompletionRequest.Text(content, "messages"),
            // Content parts: text only (this model reads no images or audio); the parts are joined.
            JsonValueKind.Array => content.EnumerateArray().Aggregate(new StringBuilder(), (text, part) =>
                part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "text"
                    && part.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String
                    ? text.Append(CompletionRequest.Text(t, "messages"))
                    : throw ApiError.Field("messages", $"'{at}.content': only parts of type 'text' are supported.")).ToString(),
            _ => throw ApiError.Field("messages", $"'{at}.content' must be a string or an array of text parts."),
        });
    }
}
