using KvPacket.Compute.Kv;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Model;

namespace KvPacket.Engine.Forward;

/// <summary>
/// A model that runs forward steps over sequences held in its own paged KV cache — the CPU <see cref="Transformer"/> or
/// the GPU <c>CudaTransformer</c>. Everything the RAG engine needs goes through it: token and soft-token prefill, packets
/// built alone and placed as shared, query-realigned blocks, and CacheBlend's selective recompute — so the same driver
/// code (and the same tests) run on either. A backend that cannot run an operation says so with
/// <see cref="NotSupportedException"/> naming it.
/// </summary>
public interface IForwardBackend : IDisposable
{
    /// <summary>The checkpoint this runs (its fingerprint names the packets it may use).</summary>
    Checkpoint Model { get; }

    /// <summary>The model's shape.</summary>
    ModelConfig Config { get; }

    /// <summary>The KV cache packets' blocks live in.</summary>
    KvBlocks KvBlocks { get; }

    /// <summary>The longest a sequence may grow.</summary>
    int MaxSequenceLength { get; }

    /// <summary>Starts an empty sequence and returns its handle.</summary>
    int CreateSequence();

    /// <summary>Frees sequence <paramref name="sequence"/>'s KV.</summary>
    void ReleaseSequence(int sequence);

    /// <summary>Tokens sequence <paramref name="sequence"/> holds.</summary>
    int SequenceLength(int sequence);

    /// <summary>Most tokens one <see cref="Step"/> takes.</summary>
    int MaxStepTokens { get; }

    /// <summary>Most chunks (sequences) one <see cref="Step"/> takes.</summary>
    int MaxStepSequences { get; }

    /// <summary>
    /// One forward step over a ragged batch: chunk i appends <paramref name="lengths"/>[i] of <paramref name="tokens"/>
    /// (in order) to sequence <paramref name="sequences"/>[i]; row i of <paramref name="logits"/> ([chunks, vocab])
    /// receives the logits after chunk i's last token. A negative id −1 − r is a soft token: row r of
    /// <paramref name="soft"/> ([rows, hidden]) is its input embedding (KV Packet's header and trailer, KVLink's links);
    /// a chunk is all tokens or all soft tokens of consecutive rows.
    /// </summary>
    void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, Span<float> logits);

    /// <summary>
    /// <see cref="Step"/> with each chunk's next token chosen where the logits are (on a GPU only the ids cross the bus):
    /// <paramref name="next"/>[i] receives the token <paramref name="draws"/>[i] chooses from chunk i's logits — the
    /// argmax (lowest id on ties), or a seeded draw after temperature, top-k and top-p, by <see cref="TokenDraw"/>'s rule.
    /// </summary>
    void StepDraw(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, ReadOnlySpan<TokenDraw> draws,
        Span<int> next);

    /// <summary>
    /// Starts (or, with false, stops) timing each step's stages — norms, products, attention, …: device timers on a GPU,
    /// whose steps then run without graphs, the clock on the CPU. Returns whether this backend times stages at all.
    /// </summary>
    bool TimeStages(bool on) => false;

    /// <summary>Milliseconds per stage over the steps since the last call while stages are timed (else none).</summary>
    IReadOnlyDictionary<string, double> TakeStageTimes() => System.Collections.Frozen.FrozenDictionary<string, double>.Empty;

    /// <summary>Fresh blocks that appending <paramref name="tokens"/> computed tokens to <paramref name="sequence"/> would take.</summary>
    int BlocksNeededFor(int sequence, int tokens);

    /// <summary>
    /// Gives the empty <paramref name="sequence"/> <paramref name="source"/>'s KV for its first positions, up to (not past)
    /// <paramref name="upTo"/>, as shared reference-counted blocks (nothing is copied), and returns where the sequence's
    /// own tokens start: the n choices of one prompt compute only the tail. Shares nothing (returns 0) unless what follows
    /// the shared blocks is computed tokens.
    /// </summary>
    int SharePrefix(int sequence, int source, int upTo);

    /// <summary>
    /// Appends <paramref name="tokens"/> to <paramref name="sequence"/> (in steps of the backend's batch size). With
    /// <see cref="LogitsFor.LastToken"/> <paramref name="logits"/> receives the last token's row; with
    /// <see cref="LogitsFor.AllTokens"/> one row per token.
    /// </summary>
    void Prefill(int sequence, ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken);

    /// <summary>Appends soft tokens ([n, hidden] input embeddings) to <paramref name="sequence"/>; <paramref name="logits"/> receives the last one's row.</summary>
    void PrefillSoft(int sequence, ReadOnlySpan<float> embeddings, Span<float> logits);

    /// <summary>
    /// Computes <paramref name="tokens"/> alone from position 0, between optional header and trailer soft tokens
    /// ([n, hidden], KV Packet's adapters), and freezes the result as a packet: shared, immutable KV blocks any sequence
    /// can place with <see cref="AppendPacket"/>. With <paramref name="keep"/> below 1 the packet is token-pruned to that
    /// fraction of the document's tokens (those that received the most attention while it was built).
    /// </summary>
    Packet BuildPacket(ReadOnlySpan<int> tokens, ReadOnlySpan<float> header = default, ReadOnlySpan<float> trailer = default, double keep = 1.0);

    /// <summary>
    /// Places <paramref name="packet"/>'s tokens [<paramref name="skip"/>, …) at <paramref name="sequence"/>'s end as shared
    /// blocks, queries realigned by the placement's offset at attention time (nothing is copied or rewritten). Skipping
    /// lets the caller recompute the packet's first tokens in context (EPIC). <paramref name="keyOrigin"/> ≥ 0 leaves the
    /// packet's keys unaligned instead: its first token's keys stand at that position whatever the placement (the
    /// ablation of KVLink's re-positioning: documents that all start where the first one does); −1 realigns.
    /// </summary>
    void AppendPacket(int sequence, Packet packet, int skip = 0, int keyOrigin = -1);

    /// <summary>
    /// <paramref name="packet"/> — blocks of a host <see cref="KvBlockPool"/> of this cache's layout (a packet read from the
    /// store) — in this backend's cache: the same packet shared when it already lives there, else a copy.
    /// </summary>
    Packet ImportPacket(Packet packet);

    /// <summary>
    /// <see cref="ImportPacket"/> that may return before the copy has read all of <paramref name="packet"/>'s host blocks
    /// (a GPU's DMA, ordered before the backend's later work): the caller leaves those blocks untouched until
    /// <see cref="WaitForImports"/>, and meanwhile stages the next packet. By default the copy is done on return.
    /// </summary>
    Packet BeginImport(Packet packet) => ImportPacket(packet);

    /// <summary>
    /// Whether <see cref="BeginImportInt8"/> takes packets whose host blocks hold <see cref="Int8KvBlock"/>s and decodes
    /// them itself (a GPU: half an f16 packet's bytes cross the bus, decoded on the device).
    /// </summary>
    bool DecodesInt8Blocks => false;

    /// <summary>
    /// <see cref="BeginImport"/> of a packet whose host blocks each start with an <see cref="Int8KvBlock"/> instead of
    /// the layout's elements (the rest of each block is the backend's to use until <see cref="WaitForImports"/>); the
    /// imported packet holds the decoded values. Only where <see cref="DecodesInt8Blocks"/>.
    /// </summary>
    Packet BeginImportInt8(Packet packet) => throw new NotSupportedException("This backend imports packets in its own KV layout only; decode int8 blocks on the host.");

    /// <summary>Returns once every <see cref="BeginImport"/> so far has finished reading its host blocks.</summary>
    void WaitForImports() { }

    /// <summary>This backend's <paramref name="packet"/> in the host pool <paramref name="host"/> (to store it): shared when it already lives there, else a copy.</summary>
    Packet ExportPacket(Packet packet, KvBlockPool host);

    /// <summary>
    /// A host pool of <paramref name="blockCount"/> blocks of this cache's layout, to stage packets between the store and
    /// this backend: plain native memory by default; a GPU backend's is page-locked so its <see cref="ImportPacket"/> copies by DMA.
    /// </summary>
    KvBlockPool CreateStagingPool(int blockCount) => new(KvBlocks.Layout, blockCount);

    /// <summary>Places a private, key-realigned copy of <paramref name="packet"/> at <paramref name="sequence"/>'s end, ready for <see cref="BlendRecompute"/>.</summary>
    void PlacePacketCopy(int sequence, Packet packet);

    /// <summary>
    /// CacheBlend-style selective recompute of the document tokens at positions [<paramref name="firstPosition"/>, …) of
    /// <paramref name="sequence"/> (placed with <see cref="PlacePacketCopy"/>): layer 0 for all of them in context, the
    /// remaining layers for the <paramref name="fraction"/> whose layer-1 K and V deviate most. Returns how many went on.
    /// </summary>
    int BlendRecompute(int sequence, ReadOnlySpan<int> tokens, int firstPosition, double fraction);
}
