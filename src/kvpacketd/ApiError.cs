using Microsoft.AspNetCore.Http;

namespace KvPacket.Daemon;

/// <summary>A request the daemon refuses: the HTTP status and a message for the JSON error body.</summary>
public sealed class ApiError(int status, string message, string type = "invalid_request_error") : Exception(message)
{
    /// <summary>HTTP status code.</summary>
    public int Status { get; } = status;

    /// <summary>OpenAI-style error type.</summary>
    public string Type { get; } = type;

    /// <summary>Writes <c>{"error": {"message", "type", "code"}}</c> with the status.</summary>
    public Task WriteAsync(HttpContext context) =>
        Results.Json(new { error = new { message = Message, type = Type, code = Status } }, statusCode: Status).ExecuteAsync(context);
}
