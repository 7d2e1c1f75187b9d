using System.Diagnostics;
using System.Net.Http.Json;
using KvPacket.Daemon;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Rag;
using KvPacket.Store;

namespace KvPacket.Cli.Bench;

/// <summary>
/// A load generator against a kvpacketd started in this process on a temporary socket and store (loopback only,
/// bounded in requests), on the CPU or the GPU: for each concurrency level, streaming requests over <c>documents</c>
/// packets of <c>documentTokens</c> tokens each and a <c>promptTokens</c>-token query — in kvpacket mode with the packets
/// resident (an untrained 4+4 adapter: the cost of a trained one), in kvpacket mode on a second daemon that keeps
/// nothing resident (every packet read from the store, its files in the page cache), and in full mode (documents
/// recomputed), and in kvpacket mode on a third daemon whose store holds the packets as int8 (nothing resident): output
/// tokens/s and p50/p99 time to first token seen by the client; and the store loads' GB/s.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class ServeBenchmark
{
    public static BenchResult Run(string modelPath, string name, string device, int[] concurrency, int documents, int documentTokens, int promptTokens, int maxTokens,
        int requestsPerLevel, string? trace = null, bool sampled = false)
    {
        var figures = new Dictionary<string, double>();
        string root = Path.Combine(Path.GetTempPath(), $"kvpacket-bench-serve-{Environment.ProcessId}");
        string store = Path.Combine(root, "store"), socket = Path.Combine(root, "run", "d.sock");
        string weights = "";
        try
        {
            int vocab;
            using (var checkpoint = Core.Checkpoints.CheckpointLoader.Load(modelPath))
            {
                vocab = checkpoint.Config.VocabSize;
                weights = checkpoint.TokenEmbedding.Type.ToString();
                foreach (string directory in new[] { store, store + "-int8" })
                {
                    using var packets = PacketStore.Open(directory);
                    packets.PutAdapterAsync(Adapter.Untrained("bench", checkpoint.Config.HiddenSize, 4, 4, 0), ModelFingerprint.Of(checkpoint), checkpoint.Config.HiddenSize)
                        .AsTask().GetAwaiter().GetResult();
                }
            }
            string[] Flags(string directory) => ["--model", modelPath, "--store", directory, "--socket", socket, "--adapter", "bench", "--max-waiting", "1024", "--kv-tokens", "131072", "--device", device];
            string[] common = Flags(store);
            var ids = new List<string>();
            // Daemon 1: packets added (built, stored) and kept resident; kvpacket, then full.
            using (var stop = new CancellationTokenSource())
            {
                var (daemon, client) = StartDaemon(trace is null ? common : [.. common, "--trace", Path.GetFullPath(trace)], socket, stop.Token);
                using (client)
                {
                    var random = new SeededRandom(17);
                    for (int d = 0; d < documents; d++)
                        ids.Add(client.SendJson(HttpMethod.Post, "/v1/packets", new { tokens = random.NextTokens(documentTokens, 3, vocab) }).GetProperty("id").GetString()!);
                    Levels(client, ids, "kvpacket", "kvpacket", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab);
                    if (sampled)
                    {
                        Levels(client, ids, "kvpacket", "kvpacket_sampled", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab, Draws.Sampled);
                        Levels(client, ids, "kvpacket", "kvpacket_sampled_on_host", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab, Draws.SampledOnHost);
                    }
                    Levels(client, ids, "full", "full", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab);
                }
                stop.Cancel();
                daemon.GetAwaiter().GetResult();
            }
            // The same packets built into a store that keeps them as int8, by a daemon that stores them so — before daemon 2
            // runs, so both stores' files have been written back and sit in the page cache alike when they are measured.
            string[] int8 = [.. Flags(store + "-int8"), "--packet-storage", "int8", "--resident-blocks", "0"];
            using (var stop = new CancellationTokenSource())
            {
                var (daemon, client) = StartDaemon(int8, socket, stop.Token);
                using (client)
                {
                    var random = new SeededRandom(17);
                    for (int d = 0; d < documents; d++) client.SendJson(HttpMethod.Post, "/v1/packets", new { tokens = random.NextTokens(documentTokens, 3, vocab) });
                }
                stop.Cancel();
                daemon.GetAwaiter().GetResult();
            }
            // Daemon 2, same store, nothing resident: every request reads its packets from the store (the page cache).
            using (var stop = new CancellationTokenSource())
            {
                var (daemon, client) = StartDaemon([.. common, "--resident-blocks", "0"], socket, stop.Token);
                using (client)
                {
                    Levels(client, ids, "kvpacket", "kvpacket_store", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab);
                    StoreLoads(client, "store", figures);
                }
                stop.Cancel();
                daemon.GetAwaiter().GetResult();
            }
            // Daemon 3, the int8 store, nothing resident: half the bytes read and copied (decoded on the GPU there).
            using (var stop = new CancellationTokenSource())
            {
                var (daemon, client) = StartDaemon(int8, socket, stop.Token);
                using (client)
                {
                    Levels(client, ids, "kvpacket", "kvpacket_store_int8", figures, concurrency, promptTokens, maxTokens, requestsPerLevel, vocab);
                    StoreLoads(client, "store_int8", figures);
                }
                stop.Cancel();
                daemon.GetAwaiter().GetResult();
            }
            if (device != "cpu" && Compute.Cuda.CudaDevice.IsAvailable(out _)) figures["h2d_pageable_gb_per_s"] = HostToDeviceGBps(64 << 20);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
        figures["documents"] = documents;
        figures["document_tokens"] = documentTokens;
        figures["prompt_tokens"] = promptTokens;
        figures["max_tokens"] = maxTokens;
        return new BenchResult("serve", $"{name}-{device}", weights, "F16", Environment.ProcessorCount, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    /// <summary>How a request's tokens are chosen.</summary>
    private enum Draws
    {
        /// <summary>The argmax.</summary>
        Greedy,
        /// <summary>Temperature 0.8, top-k 50, top-p 0.95, seeded per request: drawn where the logits are.</summary>
        Sampled,
        /// <summary>The same with a logit bias of nothing, which makes the scheduler bring the logits back and draw on the host.</summary>
        SampledOnHost,
    }

    /// <summary>A warm-up, then every concurrency level of <paramref name="mode"/> requests, recorded under <paramref name="label"/>.</summary>
    private static void Levels(HttpClient client, List<string> ids, string mode, string label, Dictionary<string, double> figures, int[] concurrency, int promptTokens,
        int maxTokens, int requestsPerLevel, int vocab, Draws draws = Draws.Greedy)
    {
        Load(client, ids, mode, 1, 2, promptTokens, maxTokens, vocab, draws); // warm-up: JIT done (and packets resident, where they stay)
        foreach (int c in concurrency)
        {
            var (ttfts, tokens, seconds) = Load(client, ids, mode, c, Math.Max(requestsPerLevel, c), promptTokens, maxTokens, vocab, draws);
            figures[$"{label}_c{c}_output_tokens_per_s"] = tokens / seconds;
            Statistics.RecordTtft(figures, $"{label}_c{c}", ttfts);
            Console.Error.WriteLine($"  {label} c={c}: {tokens / seconds:F1} tok/s, TTFT p50 {figures[$"{label}_c{c}_ttft_p50_ms"]:F1} ms, p99 {figures[$"{label}_c{c}_ttft_p99_ms"]:F1} ms");
        }
    }

    /// <summary>A plain copy of <paramref name="bytes"/> from pageable host memory to the GPU, the median of five after a warm-up: what a packet load is measured against.</summary>
    private static double HostToDeviceGBps(int bytes)
    {
        using var gpu = Compute.Cuda.CudaDevice.Open();
        var host = new byte[bytes];
        Random.Shared.NextBytes(host);
        using var buffer = gpu.Allocate(bytes);
        gpu.Upload<byte>(host, buffer);
        double gbps = bytes / Statistics.Median(gpu.Time(() => gpu.Upload<byte>(host, buffer), 5)) / 1e6;
        Console.Error.WriteLine($"  host-to-device copy (pageable, {bytes >> 20} MB): {gbps:F2} GB/s");
        return gbps;
    }

    /// <summary>The daemon's store loads so far, recorded under <paramref name="label"/>: count, those read ahead, GB/s of stored bytes.</summary>
    private static void StoreLoads(HttpClient client, string label, Dictionary<string, double> figures)
    {
        double bytes = Metric(client, "kvpacket_packet_store_load_bytes"), seconds = Metric(client, "kvpacket_packet_store_load_seconds");
        figures[$"{label}_loads"] = Metric(client, "kvpacket_packet_store_loads");
        figures[$"{label}_prefetched_loads"] = Metric(client, "kvpacket_packet_store_prefetched_loads");
        figures[$"{label}_load_gb_per_s"] = seconds > 0 ? bytes / seconds / 1e9 : 0;
        Console.Error.WriteLine($"  {label} loads: {figures[$"{label}_loads"]} ({figures[$"{label}_prefetched_loads"]} read ahead) of {bytes / 1e6:F0} MB in all, " +
                                $"{figures[$"{label}_load_gb_per_s"]:F2} GB/s of stored bytes into the KV cache");
    }

    /// <summary>Gauge <paramref name="name"/> from the daemon's Prometheus text.</summary>
    private static double Metric(HttpClient client, string name)
    {
        string text = client.GetStringAsync("/metrics").GetAwaiter().GetResult();
        foreach (string line in text.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal)) return double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        throw new InvalidOperationException($"/metrics has no {name}");
    }

    /// <summary>Runs <paramref name="requests"/> streaming requests over the packets <paramref name="ids"/>, <paramref name="concurrency"/> at a time.</summary>
    private static (double[] Ttft, long Tokens, double Seconds) Load(HttpClient client, List<string> ids, string mode, int concurrency, int requests, int promptTokens,
        int maxTokens, int vocab, Draws draws) =>
        Load(client, i => new
        {
            prompt = new SeededRandom((ulong)i + 1000).NextTokens(promptTokens, 3, vocab), packets = ids, mode, max_tokens = maxTokens, stream = true,
            stop_token_ids = Array.Empty<int>(),
            temperature = draws == Draws.Greedy ? 0 : 0.8, top_k = draws == Draws.Greedy ? 0 : 50, top_p = draws == Draws.Greedy ? 1 : 0.95, seed = i,
            logit_bias = draws == Draws.SampledOnHost ? new Dictionary<string, float> { ["0"] = 0 } : null,
        }, concurrency, requests);

    /// <summary>
    /// Runs <paramref name="requests"/> streaming completions (request i's body from <paramref name="body"/>),
    /// <paramref name="concurrency"/> at a time; returns each request's time to first token, the tokens and the wall time.
    /// </summary>
    public static (double[] Ttft, long Tokens, double Seconds) Load(HttpClient client, Func<int, object> body, int concurrency, int requests)
    {
        var ttfts = new double[requests];
        long tokens = 0;
        int next = -1;
        long start = Stopwatch.GetTimestamp();
        var workers = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            for (int i; (i = Interlocked.Increment(ref next)) < requests;)
            {
                long sent = Stopwatch.GetTimestamp();
                using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body(i)) };
                using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
                int count = 0;
                while (await reader.ReadLineAsync() is string line)
                {
                    if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
                    if (count++ == 0) ttfts[i] = Stopwatch.GetElapsedTime(sent).TotalSeconds;
                }
                Interlocked.Add(ref tokens, count - 1); // the last event carries the summary, not a token
            }
        })).ToArray();
        Task.WaitAll(workers);
        return (ttfts, tokens, Stopwatch.GetElapsedTime(start).TotalSeconds);
    }

    /// <summary>Starts kvpacketd with <paramref name="args"/> in this process and returns it with a client on its <paramref name="socket"/>, once /health answers.</summary>
    public static (Task<int> Daemon, HttpClient Client) StartDaemon(string[] args, string socket, CancellationToken stop)
    {
        var daemon = Task.Run(() => Daemon.Daemon.RunAsync(args, stop));
        var client = UnixSocketClient.Create(socket, TimeSpan.FromMinutes(10));
        WaitForHealth(client, daemon);
        return (daemon, client);
    }

    private static void WaitForHealth(HttpClient client, Task<int> daemon)
    {
        for (int i = 0; i < 600; i++)
        {
            if (daemon.IsCompleted) throw new InvalidOperationException($"kvpacketd exited with {daemon.Result}");
            try { if (client.GetAsync("/health").GetAwaiter().GetResult().IsSuccessStatusCode) return; }
            catch (HttpRequestException) { }
            Thread.Sleep(50);
        }
        throw new TimeoutException("kvpacketd did not come up");
    }
}
