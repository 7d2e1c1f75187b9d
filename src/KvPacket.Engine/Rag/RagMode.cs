namespace KvPacket.Engine.Rag;

/// <summary>How a RAG prompt's documents reach the KV cache (DESIGN.md §1).</summary>
public enum RagMode
{
    /// <summary>Everything prefilled in one context: the quality reference, and the slowest.</summary>
    Full,
    /// <summary>Independent packets placed side by side (realigned), nothing recomputed.</summary>
    Naive,
    /// <summary>KV Packet: packets built between header and trailer adapters; only the query is prefilled.</summary>
    KvPacket,
    /// <summary>KVLink: independent packets, with link soft tokens after each document computed at query time.</summary>
    KvLink,
    /// <summary>EPIC-style: the first k tokens of each document are recomputed in context, the rest comes from its packet.</summary>
    Epic,
    /// <summary>CacheBlend-style: each document's tokens whose layer-1 K/V deviate most from full context (a fraction r) are recomputed.</summary>
    CacheBlend,
}
