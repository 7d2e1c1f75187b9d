using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Cli.Bench;

/// <summary>
/// TTFT of one RAG request per mode on the same model, on either backend: n documents of m tokens and a query. Packets
/// are built before the clock starts (they are precomputed in the product); TTFT is wall time from the request to the
/// query's logits in host memory, one untimed warm-up run then the median over repeats; the ratio to full recompute is
/// taken within the run. Adapters are zeros: the shapes are synthetic, only the cost matters. A mode the backend
/// refuses is reported as not run.
/// </summary>
internal static class RagBenchmark
{
    /// <summary>The benchmark's request: seeded random documents and query after a BOS.</summary>
    public static RagRequest Request(Core.Model.ModelConfig config, int documents, int documentTokens, int queryTokens)
    {
        var random = new SeededRandom(21);
        int[] Tokens(int n) => random.NextTokens(n, 3, config.VocabSize);
        return new RagRequest([config.BosTokenId ?? 1], Enumerable.Range(0, documents).Select(_ => Tokens(documentTokens)).ToArray(), Tokens(queryTokens));
    }

    /// <summary>The benchmark's engine: zero adapters of <paramref name="adapterTokens"/> soft tokens each.</summary>
    public static RagEngine Engine(IForwardBackend model, int epicTokens, int adapterTokens) => new(model)
    {
        Adapter = Adapter.Untrained("untrained", model.Config.HiddenSize, adapterTokens, adapterTokens, adapterTokens),
        EpicRecomputeTokens = epicTokens,
    };

    public static BenchResult Run(IForwardBackend model, string name, string weightType, string kvType, int threads, int documents, int documentTokens, int queryTokens,
        int repeats, int epicTokens, int adapterTokens)
    {
        var request = Request(model.Config, documents, documentTokens, queryTokens);
        using var engine = Engine(model, epicTokens, adapterTokens);

        var figures = new Dictionary<string, double>();
        float[]? fullLogits = null;
        double fullTtft = 0;
        foreach (var mode in Enum.GetValues<RagMode>())
        {
            var times = new List<double>();
            RagResult last;
            string key = mode.ToString().ToLowerInvariant();
            try { last = engine.Prefill(request, mode); }
            catch (NotSupportedException e)
            {
                Console.Error.WriteLine($"{key}: not run on this backend ({e.Message})");
                continue;
            }
            for (int r = 0; r < repeats; r++)
            {
                last.Sequence.Dispose();
                last = engine.Prefill(request, mode);
                times.Add(last.TimeToFirstTokenSeconds);
            }
            last.Sequence.Dispose();
            times.Sort();
            double ttft = times[times.Count / 2];
            if (mode == RagMode.Full) { fullLogits = last.QueryLogits; fullTtft = ttft; }
            figures[$"{key}_ttft_s"] = ttft;
            figures[$"{key}_ttft_ratio_to_full"] = ttft / fullTtft;
            figures[$"{key}_prefilled_tokens"] = last.PrefilledTokens;
            figures[$"{key}_document_GFLOP"] = last.DocumentFlops / 1e9;
            figures[$"{key}_packet_KV_MB"] = last.PacketKvBytes / 1e6;
            int vocab = model.Config.VocabSize;
            figures[$"{key}_last_token_KL_to_full"] = ModeEvaluation.Kl(fullLogits!.AsSpan(fullLogits!.Length - vocab), last.QueryLogits.AsSpan(last.QueryLogits.Length - vocab));
        }
        return new BenchResult("rag", name, weightType, kvType, threads, figures,
            BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }
}
