using System.Diagnostics;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Daemon;
using KvPacket.Engine.Forward;
using KvPacket.Store;
using StackExchange.Redis;

namespace KvPacket.Cli.Bench;

/// <summary>
/// The shared packet tier on a running Redis-protocol server (Garnet), on one model:
/// <list type="bullet">
/// <item>loads of one packet: from the shared tier, from the local store (page cache) and rebuilt by the model, passes
/// alternating, against plain pipelined GETs of the same values (the tier's own roofline) in the same passes; ms per
/// packet, GB/s, and managed bytes allocated per shared load (all threads);</item>
/// <item>time to first token on node B for packets first ingested on node A (two kvpacketd in this process, each with
/// its own store), per concurrency: cold (every packet loaded from the tier), then the same requests again (resident),
/// against node C, which has no shared tier and builds every packet.</item>
/// </list>
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class SharedTierBenchmark
{
    public static BenchResult Run(string modelPath, string name, string tierAddress, int packetTokens, int packets, int passes,
        int[] concurrency, int documents, int requestsAtOne)
    {
        var figures = new Dictionary<string, double>();
        string root = Path.Combine(Path.GetTempPath(), $"kvpacket-bench-shared-{Environment.ProcessId}");
        string weights;
        // Keys of one run never meet another run's: the prefix is fresh.
        var options = SharedTierOptions.Parse(tierAddress) with { KeyPrefix = $"kvpbench{Environment.ProcessId}x{Environment.TickCount64}" };
        try
        {
            using (var checkpoint = CheckpointLoader.Load(modelPath))
            {
                weights = checkpoint.TokenEmbedding.Type.ToString();
                MeasureLoads(checkpoint, options, Path.Combine(root, "loads"), packetTokens, packets, passes, figures);
            }
            MeasureTtft(modelPath, tierAddress, root, packetTokens, concurrency, documents, requestsAtOne, figures);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
        figures["packet_tokens"] = packetTokens;
        figures["documents_per_request"] = documents;
        return new BenchResult("shared-tier", name, weights, "F16", Environment.ProcessorCount, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    private static void MeasureLoads(Checkpoint checkpoint, SharedTierOptions options, string directory, int packetTokens, int packets, int passes, Dictionary<string, double> figures)
    {
        using var model = new Transformer(checkpoint, new TransformerOptions { KvCacheTokens = 4 * packetTokens, MaxBatchTokens = 512 });
        var fingerprint = ModelFingerprint.Of(checkpoint);
        int vocab = checkpoint.Config.VocabSize;
        var random = new SeededRandom(29);

        // Rebuilds: the model's prefill of a document alone, what a node without the packet pays.
        var builds = new List<double>();
        Packet? built = null;
        for (int i = 0; i < 3; i++)
        {
            built?.Dispose();
            int[] document = random.NextTokens(packetTokens, 3, vocab);
            long start = Stopwatch.GetTimestamp();
            built = model.BuildPacket(document, default, default);
            builds.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        using var store = PacketStore.Open(directory);
        using var tier = SharedPacketTier.Connect(options);
        if (!tier.IsConnected) throw new InvalidOperationException($"the shared tier at {tier.Endpoint} is unreachable: start garnet-server first.");
        var ids = new PacketId[packets];
        long publishStart = Stopwatch.GetTimestamp();
        using (built)
            for (int i = 0; i < packets; i++)
            {
                ids[i] = store.PutAsync(built!, fingerprint, random.NextTokens(packetTokens, 3, vocab), AdapterRef.None).AsTask().GetAwaiter().GetResult().Id;
                if (!tier.Publish(store, ids[i])) throw new InvalidOperationException("publishing to the shared tier failed");
            }
        double publishSeconds = Stopwatch.GetElapsedTime(publishStart).TotalSeconds;
        store.TryGetInfo(ids[0], out var info);
        double packetBytes = info.StoredBytes;

        using var raw = ConnectionMultiplexer.Connect(options.Endpoint);
        var database = raw.GetDatabase();
        // The values a load reads: each packet's manifest and pages (pages counted by probing, once).
        int pages = Enumerable.Range(0, 1024).TakeWhile(p => database.KeyExists(tier.PageKey(ids[0], p))).Count();
        var keys = ids.SelectMany(id => Enumerable.Range(0, pages).Select(p => (RedisKey)tier.PageKey(id, p)).Append(tier.ManifestKey(id))).ToArray();

        var shared = new List<double>();
        var local = new List<double>();
        var gets = new List<double>();
        long allocated = long.MaxValue;
        for (int pass = -1; pass < passes; pass++) // pass -1 warms up
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            long start = Stopwatch.GetTimestamp();
            foreach (var id in ids)
            {
                if (!tier.TryLoad(id, fingerprint, model.KvPool, out var packet)) throw new InvalidOperationException($"shared-tier load of {id} failed");
                packet.Dispose();
            }
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (pass >= 0) allocated = Math.Min(allocated, (GC.GetTotalAllocatedBytes(precise: true) - before) / packets);
            if (pass >= 0) shared.Add(seconds);

            start = Stopwatch.GetTimestamp();
            foreach (var id in ids)
            {
                if (!store.TryLoad(id, fingerprint, model.KvPool, out var packet)) throw new InvalidOperationException($"store load of {id} failed");
                packet.Dispose();
            }
            if (pass >= 0) local.Add(Stopwatch.GetElapsedTime(start).TotalSeconds);

            start = Stopwatch.GetTimestamp();
            var leases = keys.Select(k => database.StringGetLeaseAsync(k)).ToArray();
            foreach (var lease in leases) lease.GetAwaiter().GetResult()?.Dispose();
            if (pass >= 0) gets.Add(Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        double sharedS = Statistics.Median(shared), localS = Statistics.Median(local), getS = Statistics.Median(gets);
        figures["packet_MB"] = packetBytes / 1e6;
        figures["packets_per_pass"] = packets;
        figures["rebuild_ms_per_packet_median"] = Statistics.Median(builds);
        figures["shared_tier_ms_per_packet_median"] = sharedS * 1e3 / packets;
        figures["local_store_ms_per_packet_median"] = localS * 1e3 / packets;
        figures["shared_tier_GB_per_s_median"] = packets * packetBytes / sharedS / 1e9;
        figures["local_store_GB_per_s_median"] = packets * packetBytes / localS / 1e9;
        figures["plain_pipelined_GET_GB_per_s_median"] = packets * packetBytes / getS / 1e9;
        figures["shared_tier_over_plain_GET"] = getS / sharedS;
        figures["publish_GB_per_s"] = packets * packetBytes / publishSeconds / 1e9;
        figures["managed_bytes_per_shared_load_all_threads"] = allocated;
        Console.Error.WriteLine($"  one {packetBytes / 1e6:F1} MB packet: shared tier {figures["shared_tier_ms_per_packet_median"]:F1} ms, local store {figures["local_store_ms_per_packet_median"]:F1} ms, rebuild {figures["rebuild_ms_per_packet_median"]:F0} ms; plain GETs {figures["plain_pipelined_GET_GB_per_s_median"]:F2} GB/s");
    }

    private static void MeasureTtft(string modelPath, string tier, string root, int packetTokens, int[] concurrency, int documents, int requestsAtOne, Dictionary<string, double> figures)
    {
        int vocab;
        using (var checkpoint = CheckpointLoader.Load(modelPath)) vocab = checkpoint.Config.VocabSize;
        // Request i of a level uses its own documents, so on a cold node every packet it names is a first use.
        var levels = concurrency.Select(c => (Concurrency: c, Requests: c == 1 ? requestsAtOne : c)).ToArray();
        // Documents of this run only: the daemons use the tier's standard keys, which earlier runs may have filled.
        ulong seed = (ulong)Environment.TickCount64;
        figures["ttft_documents_seed"] = seed;
        var random = new SeededRandom(seed);
        var bodies = levels.Select(level => Enumerable.Range(0, level.Requests).Select(_ => new
        {
            prompt = random.NextTokens(32, 3, vocab),
            documents = Enumerable.Range(0, documents).Select(_ => random.NextTokens(packetTokens, 3, vocab)).ToArray(),
        }).ToArray()).ToArray();
        object Body(int level, int i) => new { bodies[level][i].prompt, bodies[level][i].documents, mode = "naive", max_tokens = 4, temperature = 0, stream = true };

        using var stop = new CancellationTokenSource();
        var (nodeA, clientA) = StartDaemon(modelPath, Path.Combine(root, "a"), ["--shared-tier", tier], stop.Token);
        var (nodeB, clientB) = StartDaemon(modelPath, Path.Combine(root, "b"), ["--shared-tier", tier], stop.Token);
        var (nodeC, clientC) = StartDaemon(modelPath, Path.Combine(root, "c"), [], stop.Token);
        try
        {
            // Node A builds and publishes every packet; warm-up requests on B and C (their own documents) take the JIT out of the first figures.
            var started = Stopwatch.GetTimestamp();
            foreach (var level in bodies)
                foreach (var body in level)
                    foreach (var document in body.documents)
                        clientA.SendJson(HttpMethod.Post, "/v1/packets", new { tokens = document });
            Console.Error.WriteLine($"  node A built and published {bodies.Sum(l => l.Length) * documents} packets in {Stopwatch.GetElapsedTime(started).TotalSeconds:F0} s");
            var warm = new { prompt = random.NextTokens(32, 3, vocab), documents = new[] { random.NextTokens(64, 3, vocab) }, mode = "naive", max_tokens = 4, temperature = 0, stream = true };
            ServeBenchmark.Load(clientB, _ => warm, 1, 1);
            ServeBenchmark.Load(clientC, _ => warm, 1, 1);

            for (int l = 0; l < levels.Length; l++)
            {
                int level = l, c = levels[l].Concurrency, n = levels[l].Requests;
                Statistics.RecordTtft(figures, $"node_b_shared_tier_c{c}", ServeBenchmark.Load(clientB, i => Body(level, i), c, n).Ttft);
                Statistics.RecordTtft(figures, $"node_b_resident_c{c}", ServeBenchmark.Load(clientB, i => Body(level, i), c, n).Ttft);
                Statistics.RecordTtft(figures, $"node_c_rebuild_c{c}", ServeBenchmark.Load(clientC, i => Body(level, i), c, n).Ttft);
                Console.Error.WriteLine($"  c={c}: TTFT p50 node B from the shared tier {figures[$"node_b_shared_tier_c{c}_ttft_p50_ms"]:F0} ms, resident {figures[$"node_b_resident_c{c}_ttft_p50_ms"]:F0} ms; node C rebuilding {figures[$"node_c_rebuild_c{c}_ttft_p50_ms"]:F0} ms");
            }
            figures["node_b_packet_builds"] = Metric(clientB, "kvpacket_packet_builds") - 1; // less the warm-up's own document
            figures["node_b_shared_tier_hits"] = Metric(clientB, "kvpacket_shared_tier_hits");
            figures["node_b_shared_tier_errors"] = Metric(clientB, "kvpacket_shared_tier_errors");
        }
        finally
        {
            stop.Cancel();
            Task.WaitAll(nodeA, nodeB, nodeC);
            clientA.Dispose();
            clientB.Dispose();
            clientC.Dispose();
        }
    }

    private static (Task<int> Daemon, HttpClient Client) StartDaemon(string modelPath, string store, string[] extra, CancellationToken stop)
    {
        string socket = Path.Combine(store + "-run", "d.sock");
        string[] args = ["--model", modelPath, "--store", store, "--socket", socket, "--max-waiting", "1024", "--kv-tokens", "65536", .. extra];
        return ServeBenchmark.StartDaemon(args, socket, stop);
    }

    private static double Metric(HttpClient client, string name)
    {
        string text = client.GetStringAsync("/metrics").GetAwaiter().GetResult();
        string line = text.Split('\n').First(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        return double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
