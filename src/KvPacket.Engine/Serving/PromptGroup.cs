namespace KvPacket.Engine.Serving;

/// <summary>
/// Requests that share one prompt (OpenAI's <c>n</c> choices): give each the same group, and the first admitted computes
/// the prompt while the others take its KV blocks, shared and read-only, and compute only the last partial block's
/// tokens — so <c>n</c> choices cost one prefill. Requests whose prompts differ are simply computed on their own.
/// </summary>
public sealed class PromptGroup
{
    /// <summary>The request whose KV the others share (the first admitted; replaced when it ends).</summary>
    internal ScheduledRequest? Leader { get; set; }
}
