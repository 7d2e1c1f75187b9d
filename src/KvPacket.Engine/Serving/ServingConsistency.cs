using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Engine.Serving;

/// <summary>What <see cref="ServingConsistency.RunAsync"/> found.</summary>
/// <param name="Requests">Requests run each way.</param>
/// <param name="ConcurrentSameAsSolo">Requests whose tokens, run all at once, equal their solo run's.</param>
/// <param name="PreemptedSameAsSolo">The same, on an engine whose KV cache is too small for all of them (preemption and recompute).</param>
/// <param name="Preemptions">Preemptions on that engine (must be &gt; 0 for the check to mean anything).</param>
/// <param name="LeakedBlocks">KV blocks still in use after the requests ended, beyond the resident packets' (must be 0).</param>
/// <param name="FirstDifference">The first request whose tokens differed, and how (null: none).</param>
public sealed record ServingConsistencyResult(int Requests, int ConcurrentSameAsSolo, int PreemptedSameAsSolo, long Preemptions, int LeakedBlocks, string? FirstDifference)
{
    /// <summary>Every request the same every way, preemption exercised, no block leaked.</summary>
    public bool Passed => ConcurrentSameAsSolo == Requests && PreemptedSameAsSolo == Requests && Preemptions > 0 && LeakedBlocks == 0;
}

/// <summary>
/// The serving engine's contract on one backend: <c>requests</c> greedy requests over shared packets, in every serving
/// mode (full, naive, kvpacket with a header and trailer, kvlink with link tokens), run one at a time and then all at
/// once — and again on an engine whose KV cache holds only a few of them, so requests are preempted and recomputed —
/// must produce the same tokens, and give every block back. The same code checks the CPU (a test) and the GPU
/// (<c>kvpacket cuda check</c>).
/// </summary>
public static class ServingConsistency
{
    private static readonly RagMode[] Modes = [RagMode.Full, RagMode.Naive, RagMode.KvPacket, RagMode.KvLink];

    /// <summary>
    /// Runs the check with engines made by <paramref name="backend"/> (given the KV cache size in tokens) over checkpoints
    /// from <paramref name="load"/> (each engine owns one).
    /// </summary>
    public static async Task<ServingConsistencyResult> RunAsync(Func<Checkpoint> load, Func<Checkpoint, int, IForwardBackend> backend, int requests = 32, int maxTokens = 12)
    {
        using var probe = load();
        var config = probe.Config;
        var random = new SeededRandom(2024);
        int[][] documents = [.. Enumerable.Range(0, 4).Select(d => random.NextTokens(40 + 17 * d, 3, config.VocabSize))];
        float[] Soft(int count) => [.. Enumerable.Range(0, count * config.HiddenSize).Select(_ => (random.NextSingle() - 0.5f) * 0.2f)];
        var adapter = new Adapter("consistency", 1, Soft(2), Soft(2), Soft(2));
        int bos = config.BosTokenId ?? 1;
        var work = Enumerable.Range(0, requests).Select(i => new EngineRequest
        {
            Prefix = [bos],
            Packets = [.. Enumerable.Range(0, 2 + i % 2).Select(k => KvPacketEngine.IdOf(documents[(i + k) % documents.Length]))],
            Prompt = new SeededRandom((ulong)i + 77).NextTokens(6 + i % 5, 3, config.VocabSize),
            Mode = Modes[i % Modes.Length],
            Limits = new GenerationLimits { MaxTokens = maxTokens, StopTokens = [] },
        }).ToArray();
        int longest = documents.Sum(d => d.Length + 4) + 16 + maxTokens;

        // Ample room: one at a time, then all at once.
        int[][] solo, together;
        int leaked;
        await using (var engine = await Start(load, backend, kvTokens: requests * longest + 4096, adapter, documents))
        {
            int resident = engine.KvBlocksInUse;
            solo = new int[requests][];
            for (int i = 0; i < requests; i++) solo[i] = await Tokens(engine, work[i]);
            together = await Task.WhenAll(work.Select(r => Tokens(engine, r)));
            leaked = engine.KvBlocksInUse - resident - engine.Scheduler.PrefixBlocks;   // the cached BOS prefix is kept, not leaked
        }
        // Room for the packets and about four requests: the rest wait, and running ones are preempted as they grow.
        int[][] preempted;
        long preemptions;
        int packetTokens = 3 * documents.Sum(d => d.Length + 16);
        await using (var tight = await Start(load, backend, kvTokens: packetTokens + 4 * longest / 3, adapter, documents))
        {
            int resident = tight.KvBlocksInUse;
            preempted = await Task.WhenAll(work.Select(r => Tokens(tight, r)));
            preemptions = tight.Scheduler.Preemptions;
            leaked += tight.KvBlocksInUse - resident - tight.Scheduler.PrefixBlocks;
        }

        string? difference = null;
        int Same(int[][] run, string how)
        {
            int same = 0;
            for (int i = 0; i < requests; i++)
            {
                if (run[i].AsSpan().SequenceEqual(solo[i])) same++;
                else difference ??= $"request {i} ({work[i].Mode}) {how}: [{string.Join(',', run[i])}] vs alone [{string.Join(',', solo[i])}]";
            }
            return same;
        }
        return new ServingConsistencyResult(requests, Same(together, "all at once"), Same(preempted, "preempted"), preemptions, leaked, difference);
    }

    private static async Task<KvPacketEngine> Start(Func<Checkpoint> load, Func<Checkpoint, int, IForwardBackend> backend, int kvTokens, Adapter adapter, int[][] documents)
    {
        var engine = KvPacketEngine.Create(load(), new KvPacketEngineOptions { Backend = model => backend(model, kvTokens), Adapter = adapter });
        foreach (int[] document in documents) await engine.AddPacketAsync(document);
        return engine;
    }

    private static async Task<int[]> Tokens(KvPacketEngine engine, EngineRequest request)
    {
        var tokens = new List<int>();
        await foreach (var e in engine.GenerateAsync(request))
        {
            if (e.Summary is { Reason: FinishReason.Error } failed) throw new InvalidOperationException($"a {request.Mode} request failed: {failed.Error}");
            if (!e.IsFinal) tokens.Add(e.Token);
        }
        return [.. tokens];
    }
}
