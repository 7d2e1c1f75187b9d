using Microsoft.AspNetCore.Http;

namespace KvPacket.Daemon;

/// <summary>A request the daemon refuses: the HTTP status and OpenAI's error fields for the JSON body.</summary>
/// <param name="status">HTTP status code.</param>
/// <param name="message">What is wrong, for a person.</param>
/// <param name="type">OpenAI's error type (<c>invalid_request_error</c>, <c>not_found_error</c>, …).</param>
/// <param name="param">The request field at fault, if one is.</param>
/// <param name="code">A machine-readable code (<c>model_not_found</c>, …), if there is one.</param>
public sealed class ApiError(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null) : Exception(message)
{
    /// <summary>HTTP status code.</summary>
    public int Status { get; } = status;

    /// <summary>OpenAI-style error type.</summary>
    public string Type { get; } = type;

    /// <summary>The request field at fault, or null.</summary>
    public string? Param { get; } = param;

    /// <summary>A machine-readable error code, or null.</summary>
    public string? Code { get; } = code;

    /// <summary>A 400 about <paramref name="field"/>.</summary>
    public static ApiError Field(string field, string message) => new(400, message, param: field);

    /// <summary>Writes OpenAI's error body <c>{"error": {"message", "type", "param", "code"}}</c> with the status.</summary>
    public Task WriteAsync(HttpContext context) =>
        Results.Json(new { error = new { message = Message, type = Type, param = Param, code = Code } }, statusCode: Status).ExecuteAsync(context);
}
