namespace KvPacket.Engine.Rag;

/// <summary>A RAG prompt: <c>[prefix] D1 … Dn [query]</c> as token ids.</summary>
public sealed record RagRequest(int[] Prefix, IReadOnlyList<int[]> Documents, int[] Query);
