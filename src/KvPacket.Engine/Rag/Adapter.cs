namespace KvPacket.Engine.Rag;

/// <summary>
/// Trainable soft tokens shared by all documents: KV Packet's header and trailer, or KVLink's link tokens. Each is
/// a row-major [count, hidden] array of input embeddings. Identified by id and version so packets built with one
/// adapter are never mixed with another.
/// </summary>
public sealed record Adapter(string Id, int Version, float[] Header, float[] Trailer, float[] Links)
{
    /// <summary>An adapter with <paramref name="header"/> / <paramref name="trailer"/> / <paramref name="links"/> soft
    /// tokens of width <paramref name="hidden"/>, all zero: what training starts from.</summary>
    public static Adapter Untrained(string id, int hidden, int header, int trailer, int links) =>
        new(id, 0, new float[header * hidden], new float[trailer * hidden], new float[links * hidden]);
}
