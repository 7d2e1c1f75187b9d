using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Engine.Serving;

/// <summary>
/// One piece of a request's prompt, in order: tokens to compute, a packet to place (no compute) — held, or a document
/// whose packet is acquired when the request is admitted —, or soft tokens to compute (KVLink's link tokens).
/// </summary>
public abstract record PromptSegment
{
    private PromptSegment() { }

    /// <summary>Tokens that are computed (prefilled in chunks).</summary>
    public sealed record Tokens(int[] Ids) : PromptSegment;

    /// <summary>A packet placed as shared, read-only blocks. The segment holds a reference, released when its request ends.</summary>
    public sealed record Placed(Packet Packet) : PromptSegment;

    /// <summary>
    /// A document whose packet (plain, or between <paramref name="Adapter"/>'s header and trailer) the scheduler acquires
    /// from its packet source when it admits the request, and lets go when the request ends or is preempted: a waiting
    /// request holds no KV blocks, however its packets are served (resident, or read from the store into fresh blocks).
    /// </summary>
    public sealed record Document(int[] Ids, Adapter? Adapter) : PromptSegment;

    /// <summary>Soft tokens ([n, hidden] input embeddings) that are computed.</summary>
    public sealed record Soft(float[] Embeddings) : PromptSegment;

    /// <summary>Positions this segment takes in the sequence: a placed packet's whole span, else the tokens it computes.</summary>
    internal int PositionSpan(int hiddenSize) => this switch
    {
        Placed placed => placed.Packet.PositionSpan,
        Document d => d.Ids.Length + ((d.Adapter?.Header.Length ?? 0) + (d.Adapter?.Trailer.Length ?? 0)) / hiddenSize,
        _ => ComputeLength(hiddenSize),
    };

    /// <summary>Tokens this segment computes (0 for a placed packet).</summary>
    internal int ComputeLength(int hiddenSize) => this switch
    {
        Tokens t => t.Ids.Length,
        Soft s => s.Embeddings.Length / hiddenSize,
        _ => 0,
    };
}
