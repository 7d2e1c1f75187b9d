using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Serving;

/// <summary>
/// One piece of a request's prompt, in order: tokens to compute, a packet to place (no compute), soft tokens to compute
/// (KVLink's link tokens), or a packet whose first tokens are recomputed in context (EPIC).
/// </summary>
public abstract record PromptSegment
{
    private PromptSegment() { }

    /// <summary>Tokens that are computed (prefilled in chunks).</summary>
    public sealed record Tokens(int[] Ids) : PromptSegment;

    /// <summary>A packet placed as shared, read-only blocks. The segment holds a reference, released when its request ends.</summary>
    public sealed record Placed(Packet Packet) : PromptSegment;

    /// <summary>Soft tokens ([n, hidden] input embeddings) that are computed.</summary>
    public sealed record Soft(float[] Embeddings) : PromptSegment;

    /// <summary>Positions this segment takes in the sequence: a placed packet's whole span, else the tokens it computes.</summary>
    internal int PositionSpan(int hiddenSize) => this is Placed placed ? placed.Packet.PositionSpan : ComputeLength(hiddenSize);

    /// <summary>Tokens this segment computes (0 for a placed packet).</summary>
    internal int ComputeLength(int hiddenSize) => this switch
    {
        Tokens t => t.Ids.Length,
        Soft s => s.Embeddings.Length / hiddenSize,
        _ => 0,
    };
}
