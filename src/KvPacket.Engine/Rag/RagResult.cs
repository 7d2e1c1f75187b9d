using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>
/// What prefilling a request in one mode cost and produced. The caller owns <see cref="Sequence"/> (ready for decoding)
/// and disposes it.
/// </summary>
/// <param name="Sequence">The prompt's KV, ready to decode from.</param>
/// <param name="QueryLogits">Logits at the last query position ([vocab]), or at every one ([query tokens, vocab]) as <see cref="RagEngine.QueryLogits"/> asks.</param>
/// <param name="TimeToFirstTokenSeconds">Wall time from the start of the request to the last query token's logits.</param>
/// <param name="PrefilledTokens">Tokens computed at query time (documents, soft tokens and query).</param>
/// <param name="DocumentFlops">FLOPs spent at query time on document tokens and on soft tokens placed for documents.</param>
/// <param name="PacketKvBytes">Bytes of packet KV the prompt uses.</param>
public sealed record RagResult(BackendSequence Sequence, float[] QueryLogits, double TimeToFirstTokenSeconds, int PrefilledTokens, double DocumentFlops, long PacketKvBytes);
