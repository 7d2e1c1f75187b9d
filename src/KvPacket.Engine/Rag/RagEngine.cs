using System.Diagnostics;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>
/// Runs a RAG request in any <see cref="RagMode"/> on one model: takes each document's packet — plain, or built with
/// the adapter — from its <see cref="IPacketSource"/>, then assembles the prompt's block table from shared packet blocks plus whatever the mode computes at
/// query time. Every mode goes through the same batched forward pass, so their TTFT, FLOPs and outputs compare directly.
/// Runs on any <see cref="IForwardBackend"/> (the CPU <see cref="Transformer"/>, the GPU one). Not thread-safe: one
/// request at a time per instance.
/// </summary>
public sealed class RagEngine : IDisposable
{
    private readonly IForwardBackend _model;
    private readonly float[] _scratch;
    private readonly bool _ownsPackets;
    private Packet? _prefix;
    private int[] _prefixTokens = [];

    /// <summary>Creates an engine over <paramref name="model"/> that takes packets from <paramref name="packets"/>
    /// (by default, and then owned by the engine, packets built in memory).</summary>
    public RagEngine(IForwardBackend model, IPacketSource? packets = null)
    {
        _model = model;
        _scratch = new float[model.Config.VocabSize];
        _ownsPackets = packets is null;
        Packets = packets ?? new BuiltPackets(model);
    }

    /// <summary>Where the engine's packets come from.</summary>
    public IPacketSource Packets { get; }

    /// <summary>Tokens of each document recomputed in context by <see cref="RagMode.Epic"/>.</summary>
    public int EpicRecomputeTokens { get; init; } = 16;

    /// <summary>Fraction of each document's tokens <see cref="RagMode.CacheBlend"/> recomputes through every layer.</summary>
    public double CacheBlendFraction { get; init; } = 0.15;

    /// <summary>The adapter for <see cref="RagMode.KvPacket"/> (header/trailer) and <see cref="RagMode.KvLink"/> (links).</summary>
    public Adapter? Adapter { get; init; }

    /// <summary>
    /// Which query rows get logits: the last one (the default, what answering needs — the first token's distribution) or
    /// every one (for comparing modes row by row).
    /// </summary>
    public LogitsFor QueryLogits { get; init; } = LogitsFor.LastToken;

    /// <summary>
    /// Whether the prompt's prefix (BOS, a system prompt) is computed once and placed as a packet at position 0 in every
    /// mode, as a server with prefix caching does (the default), instead of being prefilled with each request. Computed
    /// alone from position 0, its KV is what the request would have computed there.
    /// </summary>
    public bool CachePrefix { get; init; } = true;

    /// <summary>
    /// Whether naive, KV Packet and KVLink packets are realigned to the positions they are placed at (the default, as
    /// KVLink does), or keep the positions they were computed at — every document then starts where the first one does,
    /// right after the prefix — the ablation that measures what re-positioning is worth.
    /// </summary>
    public bool RealignPackets { get; init; } = true;

    /// <summary>Prefills <paramref name="request"/> in <paramref name="mode"/>; packets it needs are built first, outside the timing.</summary>
    public RagResult Prefill(RagRequest request, RagMode mode)
    {
        if (request.Query.Length == 0) throw new ArgumentException("The query needs at least one token.", nameof(request));
        var adapter = mode == RagMode.KvPacket ? Adapter ?? throw new InvalidOperationException("KV Packet mode needs an adapter.") : null;
        var links = mode == RagMode.KvLink ? Adapter?.Links ?? throw new InvalidOperationException("KVLink mode needs an adapter with link tokens.") : null;

        var packets = mode == RagMode.Full ? [] : new Packet[request.Documents.Count];
        var config = _model.Config;
        var sequence = new BackendSequence(_model, _model.CreateSequence());
        int id = sequence.Id;
        try
        {
            for (int d = 0; d < packets.Length; d++) packets[d] = Packets.Acquire(request.Documents[d], adapter);
            var prefix = CachePrefix && request.Prefix.Length > 0 ? PrefixPacket(request.Prefix) : null;
            // Full recompute prefills the documents as one stretch — with the query when only its last row's logits are
            // wanted — as a server prefills a whole prompt, not a step per document.
            int[] documents = mode == RagMode.Full ? [.. request.Documents.SelectMany(d => d)] : [];
            bool oneStretch = mode == RagMode.Full && QueryLogits == LogitsFor.LastToken;
            int[] stretch = oneStretch ? [.. documents, .. request.Query] : documents;
            long start = Stopwatch.GetTimestamp();
            int prefilled = 0;
            double documentFlops = 0;
            if (prefix is not null) _model.AppendPacket(id, prefix);
            else
            {
                _model.Prefill(id, request.Prefix, _scratch);
                prefilled += request.Prefix.Length;
            }
            int keyOrigin = RealignPackets ? -1 : _model.SequenceLength(id);
            for (int d = 0; d < request.Documents.Count; d++)
            {
                int[] document = request.Documents[d];
                int position = _model.SequenceLength(id);
                switch (mode)
                {
                    case RagMode.Full:
                        break;   // below, in one stretch
                    case RagMode.Naive or RagMode.KvPacket:
                        _model.AppendPacket(id, packets[d], keyOrigin: keyOrigin);
                        break;
                    case RagMode.KvLink:
                        _model.AppendPacket(id, packets[d], keyOrigin: keyOrigin);
                        int linkCount = links!.Length / config.HiddenSize;
                        if (linkCount > 0)
                        {
                            _model.PrefillSoft(id, links, _scratch);
                            prefilled += linkCount;
                            documentFlops += FlopCount.Tokens(config, position + document.Length, linkCount);
                        }
                        break;
                    case RagMode.Epic:
                        int k = Math.Min(EpicRecomputeTokens, document.Length);
                        _model.Prefill(id, document.AsSpan(0, k), _scratch);
                        prefilled += k;
                        _model.AppendPacket(id, packets[d], skip: k);
                        documentFlops += FlopCount.Tokens(config, position, k);
                        break;
                    case RagMode.CacheBlend:
                        _model.PlacePacketCopy(id, packets[d]);
                        break;
                    default:
                        throw new ArgumentOutOfRangeException(nameof(mode), mode, null);
                }
            }
            if (mode == RagMode.CacheBlend)
            {
                // Documents are placed first, then blended in order: each sees the documents before it as already blended.
                int position = request.Prefix.Length;
                foreach (var document in request.Documents)
                {
                    int selected = _model.BlendRecompute(id, document, position, CacheBlendFraction);
                    // Layer 0 for every token, the other layers for the selected ones (counted at the document's middle position).
                    double layer = 1.0 / config.LayerCount;
                    documentFlops += layer * FlopCount.Tokens(config, position, document.Length)
                                     + (1 - layer) * selected * FlopCount.Token(config, position + document.Length / 2);
                    prefilled += document.Length;
                    position += document.Length;
                }
            }
            if (mode == RagMode.Full)
            {
                documentFlops = FlopCount.Tokens(config, _model.SequenceLength(id), documents.Length);
                prefilled += documents.Length;
            }
            var logits = new float[(QueryLogits == LogitsFor.AllTokens ? request.Query.Length : 1) * config.VocabSize];
            if (oneStretch) _model.Prefill(id, stretch, logits);
            else
            {
                if (stretch.Length > 0) _model.Prefill(id, stretch, _scratch);
                _model.Prefill(id, request.Query, logits, QueryLogits);
            }
            prefilled += request.Query.Length;
            double ttft = Stopwatch.GetElapsedTime(start).TotalSeconds;
            long packetBytes = packets.Sum(p => (long)p.Blocks.Count) * _model.KvBlocks.Layout.BlockBytes;
            return new RagResult(sequence, logits, ttft, prefilled, documentFlops, packetBytes);
        }
        catch
        {
            sequence.Dispose();
            throw;
        }
        finally
        {
            // The sequence holds its own references to the blocks it placed.
            foreach (var packet in packets) packet?.Dispose();
        }
    }

    /// <summary>The packet of the prefix <paramref name="tokens"/>, built when the prefix changes.</summary>
    private Packet PrefixPacket(int[] tokens)
    {
        if (_prefix is null || !_prefixTokens.AsSpan().SequenceEqual(tokens))
        {
            _prefix?.Dispose();
            _prefix = _model.BuildPacket(tokens);
            _prefixTokens = tokens;
        }
        return _prefix;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _prefix?.Dispose();
        _prefix = null;
        if (_ownsPackets) Packets.Dispose();
    }
}
