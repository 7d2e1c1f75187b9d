using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Cli.Bench;

/// <summary>
/// TTFT of one RAG request per mode on the same model: n documents of m tokens and a query. Packets are built before
/// the clock starts (they are precomputed in the product); each mode's TTFT is the median over repeats, and the ratio
/// to full recompute is taken within the run. Adapters are untrained (zeros) until the training issue lands.
/// </summary>
internal static class RagBenchmark
{
    public static BenchResult Run(Transformer model, string name, int documents, int documentTokens, int queryTokens, int repeats, int epicTokens, int adapterTokens)
    {
        var random = new SeededRandom(21);
        int[] Tokens(int n) => random.NextTokens(n, 3, model.Config.VocabSize);
        var request = new RagRequest([model.Config.BosTokenId ?? 1], Enumerable.Range(0, documents).Select(_ => Tokens(documentTokens)).ToArray(), Tokens(queryTokens));
        int hidden = model.Config.HiddenSize;
        using var engine = new RagEngine(model)
        {
            Adapter = Adapter.Untrained("untrained", hidden, adapterTokens, adapterTokens, adapterTokens),
            EpicRecomputeTokens = epicTokens,
        };

        var figures = new Dictionary<string, double>();
        float[]? fullLogits = null;
        double fullTtft = 0;
        foreach (var mode in Enum.GetValues<RagMode>())
        {
            var times = new List<double>();
            RagResult? last = null;
            for (int r = 0; r < repeats; r++)
            {
                last?.Sequence.Dispose();
                last = engine.Prefill(request, mode);
                times.Add(last.TimeToFirstTokenSeconds);
            }
            last!.Sequence.Dispose();
            times.Sort();
            double ttft = times[times.Count / 2];
            if (mode == RagMode.Full) { fullLogits = last.QueryLogits; fullTtft = ttft; }
            string key = mode.ToString().ToLowerInvariant();
            figures[$"{key}_ttft_s"] = ttft;
            figures[$"{key}_ttft_ratio_to_full"] = ttft / fullTtft;
            figures[$"{key}_prefilled_tokens"] = last.PrefilledTokens;
            figures[$"{key}_document_GFLOP"] = last.DocumentFlops / 1e9;
            figures[$"{key}_packet_KV_MB"] = last.PacketKvBytes / 1e6;
            int vocab = model.Config.VocabSize;
            figures[$"{key}_last_token_KL_to_full"] = ModeEvaluation.Kl(fullLogits!.AsSpan(fullLogits!.Length - vocab), last.QueryLogits.AsSpan(last.QueryLogits.Length - vocab));
        }
        return new BenchResult("rag", name, model.Model.Layers[0].Query.Type.ToString(), model.Options.KvType.ToString(), model.ThreadCount, figures,
            BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }
}
