using System.Diagnostics;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>
/// Runs a RAG request in any <see cref="RagMode"/> on one model: builds (and keeps) each document's packets — plain, and
/// per adapter — then assembles the prompt's block table from shared packet blocks plus whatever the mode computes at
/// query time. Every mode goes through the same batched forward pass, so their TTFT, FLOPs and outputs compare directly.
/// Not thread-safe: one request at a time per instance.
/// </summary>
public sealed class RagEngine : IDisposable
{
    private readonly Transformer _model;
    private readonly float[] _scratch;
    private readonly Dictionary<(string Adapter, int Version, string Document), Packet> _packets = new();

    /// <summary>Creates an engine over <paramref name="model"/>.</summary>
    public RagEngine(Transformer model)
    {
        _model = model;
        _scratch = new float[model.Config.VocabSize];
    }

    /// <summary>Tokens of each document recomputed in context by <see cref="RagMode.Epic"/>.</summary>
    public int EpicRecomputeTokens { get; init; } = 16;

    /// <summary>Fraction of each document's tokens <see cref="RagMode.CacheBlend"/> recomputes through every layer.</summary>
    public double CacheBlendFraction { get; init; } = 0.15;

    /// <summary>The adapter for <see cref="RagMode.KvPacket"/> (header/trailer) and <see cref="RagMode.KvLink"/> (links).</summary>
    public Adapter? Adapter { get; init; }

    /// <summary>The packet of <paramref name="document"/> built alone (with the KV Packet adapter when <paramref name="withAdapter"/>), built once and kept.</summary>
    public Packet PacketFor(int[] document, bool withAdapter)
    {
        var adapter = withAdapter ? Adapter ?? throw new InvalidOperationException("KV Packet mode needs an adapter.") : null;
        var key = (adapter?.Id ?? "", adapter?.Version ?? 0, Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(document.AsSpan())));
        if (!_packets.TryGetValue(key, out var packet))
            _packets[key] = packet = _model.BuildPacket(document, adapter?.Header ?? default, adapter?.Trailer ?? default);
        return packet;
    }

    /// <summary>Prefills <paramref name="request"/> in <paramref name="mode"/>; packets it needs are built first, outside the timing.</summary>
    public RagResult Prefill(RagRequest request, RagMode mode)
    {
        if (request.Query.Length == 0) throw new ArgumentException("The query needs at least one token.", nameof(request));
        bool adapted = mode == RagMode.KvPacket;
        var packets = mode == RagMode.Full ? [] : request.Documents.Select(d => PacketFor(d, adapted)).ToArray();
        var links = mode == RagMode.KvLink ? Adapter?.Links ?? throw new InvalidOperationException("KVLink mode needs an adapter with link tokens.") : null;

        var config = _model.Config;
        var sequence = _model.CreateSequence();
        try
        {
            long start = Stopwatch.GetTimestamp();
            int prefilled = 0;
            double documentFlops = 0;
            _model.Prefill(sequence, request.Prefix, _scratch);
            prefilled += request.Prefix.Length;
            for (int d = 0; d < request.Documents.Count; d++)
            {
                int[] document = request.Documents[d];
                int position = sequence.Length;
                switch (mode)
                {
                    case RagMode.Full:
                        _model.Prefill(sequence, document, _scratch);
                        prefilled += document.Length;
                        documentFlops += FlopCount.Tokens(config, position, document.Length);
                        break;
                    case RagMode.Naive or RagMode.KvPacket:
                        sequence.AppendPacket(packets[d]);
                        break;
                    case RagMode.KvLink:
                        sequence.AppendPacket(packets[d]);
                        int linkCount = links!.Length / config.HiddenSize;
                        if (linkCount > 0)
                        {
                            _model.PrefillSoft(sequence, links, _scratch);
                            prefilled += linkCount;
                            documentFlops += FlopCount.Tokens(config, position + document.Length, linkCount);
                        }
                        break;
                    case RagMode.Epic:
                        int k = Math.Min(EpicRecomputeTokens, document.Length);
                        _model.Prefill(sequence, document.AsSpan(0, k), _scratch);
                        prefilled += k;
                        sequence.AppendPacket(packets[d], skip: k);
                        documentFlops += FlopCount.Tokens(config, position, k);
                        break;
                    case RagMode.CacheBlend:
                        _model.PlacePacketCopy(sequence, packets[d]);
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
                    int selected = _model.BlendRecompute(sequence, document, position, CacheBlendFraction);
                    // Layer 0 for every token, the other layers for the selected ones (counted at the document's middle position).
                    double layer = 1.0 / config.LayerCount;
                    documentFlops += layer * FlopCount.Tokens(config, position, document.Length)
                                     + (1 - layer) * selected * FlopCount.Token(config, position + document.Length / 2);
                    prefilled += document.Length;
                    position += document.Length;
                }
            }
            var logits = new float[request.Query.Length * config.VocabSize];
            _model.Prefill(sequence, request.Query, logits, LogitsFor.AllTokens);
            prefilled += request.Query.Length;
            double ttft = Stopwatch.GetElapsedTime(start).TotalSeconds;
            long packetBytes = packets.Sum(p => (long)p.Blocks.Count) * _model.KvPool.Layout.BlockBytes;
            return new RagResult(sequence, logits, ttft, prefilled, documentFlops, packetBytes);
        }
        catch
        {
            sequence.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var packet in _packets.Values) packet.Dispose();
        _packets.Clear();
    }
}
