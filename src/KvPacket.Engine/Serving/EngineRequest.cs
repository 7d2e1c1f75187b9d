using KvPacket.Engine.Rag;

namespace KvPacket.Engine.Serving;

/// <summary>
/// A generation request to <see cref="KvPacketEngine"/>: <c>[prefix] D1 … Dn [prompt]</c>, where the documents are
/// stored packets (by id) and/or raw token documents, run in <see cref="Mode"/>.
/// </summary>
public sealed record EngineRequest
{
    /// <summary>Tokens before the documents (BOS, a system prompt).</summary>
    public int[] Prefix { get; init; } = [];

    /// <summary>Packets added with <see cref="KvPacketEngine.AddPacketAsync(int[], CancellationToken)"/>, by id, in prompt order.</summary>
    public IReadOnlyList<string> Packets { get; init; } = [];

    /// <summary>Documents given as tokens, after the named packets.</summary>
    public IReadOnlyList<int[]> Documents { get; init; } = [];

    /// <summary>The query: computed last; generation starts after it. Must not be empty.</summary>
    public required int[] Prompt { get; init; }

    /// <summary>How documents are used: <see cref="RagMode.Full"/>, <see cref="RagMode.Naive"/>, <see cref="RagMode.KvPacket"/> or <see cref="RagMode.KvLink"/>.</summary>
    public RagMode Mode { get; init; } = RagMode.KvPacket;

    /// <summary>Generation limits.</summary>
    public GenerationLimits Limits { get; init; } = new();

    /// <summary>Requests of one group with the same prompt share its KV (see <see cref="PromptGroup"/>); null: none.</summary>
    public PromptGroup? Group { get; init; }
}

/// <summary>One event of a generation stream: a token, or the end with its summary.</summary>
/// <param name="Token">The generated token (−1 in the final event).</param>
/// <param name="Summary">Set in the final event only.</param>
/// <param name="LogProbs">The token's log-probabilities, when <see cref="GenerationLimits.LogProbs"/> asked for them.</param>
public readonly record struct GenerationEvent(int Token, GenerationSummary? Summary, Sampling.TokenLogProbs? LogProbs = null)
{
    /// <summary>Whether this is the final event.</summary>
    public bool IsFinal => Summary is not null;
}

/// <summary>A document known to the engine as a packet.</summary>
/// <param name="Id">Its id (32 hex digits of a hash of its tokens and adapter).</param>
/// <param name="Document">Its tokens.</param>
/// <param name="WithAdapter">Whether it is encoded with the engine's KV Packet adapter.</param>
/// <param name="KvBytes">Bytes of its KV in the cache.</param>
public sealed record PacketHandle(string Id, int[] Document, bool WithAdapter, long KvBytes);
