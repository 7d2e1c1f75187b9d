using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>One RAG mode on the CPU and on another backend (<see cref="Measure"/>).</summary>
/// <param name="Mode">The mode.</param>
/// <param name="MaxAbsDifference">Largest |backend − CPU| logit over every query row and the greedy continuation (NaN: the backend refused the mode).</param>
/// <param name="MaxRelativeDifference">‖backend − CPU‖ / ‖CPU‖ over the same logits.</param>
/// <param name="GreedySame">Whether the backend's greedy choice at every step (both fed the CPU's tokens) was the CPU's.</param>
/// <param name="BlocksReturned">Whether every block of the backend's cache was free again afterwards.</param>
/// <param name="Refused">Why the backend refused the mode (null: it ran).</param>
/// <param name="Realigned">Whether packets were realigned to their placement (<see cref="RagEngine.RealignPackets"/>).</param>
public sealed record RagModeParity(RagMode Mode, double MaxAbsDifference, double MaxRelativeDifference, bool GreedySame, bool BlocksReturned, string? Refused,
    bool Realigned = true)
{
    /// <summary>The mode, and "local" when its packets kept their own positions.</summary>
    public string Label => Realigned ? Mode.ToString() : $"{Mode} local";

    /// <summary>
    /// One request in every RAG mode through <see cref="RagEngine"/> on the SIMD CPU backend (KV in <paramref name="kv"/>)
    /// and on <paramref name="backend"/> — packets built on each, EPIC's partial first blocks, KV Packet's header and
    /// trailer and KVLink's links as soft tokens, CacheBlend recomputing half of each document (past 16 tokens: the
    /// CUDA backend's scattered tensor-core tiles) — comparing every query row's logits and a greedy continuation (the
    /// backend fed the CPU's tokens), and checking that the backend's cache has every block back once the requests and
    /// packets are gone. A mode the backend refuses is reported with the reason. Naive and KVLink run a second time with
    /// packets left at their own positions.
    /// </summary>
    public static IReadOnlyList<RagModeParity> Measure(Checkpoint model, IForwardBackend backend, DType kv, int steps = 8)
    {
        var c = model.Config;
        var random = new SeededRandom(31);
        // Documents whose lengths are not whole blocks, so packet placements leave partial blocks and EPIC skips into one.
        var request = new RagRequest([c.BosTokenId ?? 1], [.. Enumerable.Range(0, 4).Select(d => random.NextTokens(21 + 13 * d, 3, c.VocabSize))],
            random.NextTokens(40, 3, c.VocabSize));   // past the tiled kernel's 16, few tiles, a longer context: the split kernel
        // Soft tokens of the scale of real input embeddings: rows of the embedding table.
        float[] Rows(int count)
        {
            var rows = new float[count * c.HiddenSize];
            int[] ids = random.NextTokens(count, 3, c.VocabSize);
            for (int i = 0; i < count; i++) model.TokenEmbedding.ReadRow(ids[i], rows.AsSpan(i * c.HiddenSize, c.HiddenSize));
            return rows;
        }
        var adapter = new Adapter("parity", 1, Rows(2), Rows(3), Rows(2));
        using var cpu = new Transformer(model, new TransformerOptions { KvType = kv, KvCacheTokens = 4096, MaxBatchTokens = 128 });
        var results = new List<RagModeParity>();
        foreach (var (mode, realign) in Enum.GetValues<RagMode>().Select(m => (m, true)).Concat([(RagMode.Naive, false), (RagMode.KvLink, false)]))
        {
            RagEngine Engine(IForwardBackend on) => new(on)
            {
                Adapter = adapter, EpicRecomputeTokens = 5, CacheBlendFraction = 0.5, QueryLogits = LogitsFor.AllTokens, RealignPackets = realign,
            };
            using var cpuEngine = Engine(cpu);
            var expected = Answer(cpuEngine, request, mode, new int[steps], forced: false);
            (float[] Logits, int[] Tokens, int[] Greedy) actual = default;
            string? refused = null;
            using (var otherEngine = Engine(backend))
            {
                try { actual = Answer(otherEngine, request, mode, (int[])expected.Tokens.Clone(), forced: true); }
                catch (NotSupportedException e) { refused = e.Message; }
            }
            bool blocksBack = backend.KvBlocks.FreeBlockCount == backend.KvBlocks.BlockCount;
            if (refused is not null)
            {
                results.Add(new RagModeParity(mode, double.NaN, double.NaN, false, blocksBack, refused, realign));
                continue;
            }
            double maxAbs = 0, difference = 0, norm = 0;
            for (int i = 0; i < expected.Logits.Length; i++)
            {
                double d = Math.Abs((double)actual.Logits![i] - expected.Logits[i]);
                maxAbs = Math.Max(maxAbs, d);
                difference += d * d;
                norm += (double)expected.Logits[i] * expected.Logits[i];
            }
            results.Add(new RagModeParity(mode, maxAbs, Math.Sqrt(difference / Math.Max(norm, 1e-30)), expected.Tokens.SequenceEqual(actual.Greedy), blocksBack, null, realign));
        }
        return results;
    }

    /// <summary>
    /// The request's query logits in <paramref name="mode"/> followed by the logits along a continuation of
    /// <paramref name="tokens"/>.Length tokens: its own greedy tokens (written into <paramref name="tokens"/>), or with
    /// <paramref name="forced"/> the given ones, so a second backend is compared on the same context even where a near-tie
    /// makes its own choice differ. Also returns the backend's own greedy choice at every step.
    /// </summary>
    private static (float[] Logits, int[] Tokens, int[] Greedy) Answer(RagEngine engine, RagRequest request, RagMode mode, int[] tokens, bool forced)
    {
        var result = engine.Prefill(request, mode);
        using var sequence = result.Sequence;
        int vocab = sequence.Backend.Config.VocabSize, steps = tokens.Length;
        var logits = new float[result.QueryLogits.Length + steps * vocab];
        result.QueryLogits.CopyTo(logits, 0);
        var greedy = new int[steps];
        for (int i = 0; i < steps; i++)
        {
            greedy[i] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(logits.AsSpan(result.QueryLogits.Length + (i - 1) * vocab, vocab));
            if (!forced) tokens[i] = greedy[i];
            sequence.Prefill(tokens.AsSpan(i, 1), logits.AsSpan(result.QueryLogits.Length + i * vocab, vocab));
        }
        return (logits, tokens, greedy);
    }
}
