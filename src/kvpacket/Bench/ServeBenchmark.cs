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
/// bounded in requests): for each concurrency level, streaming requests over <c>documents</c> packets of
/// <c>documentTokens</c> tokens each, in kvpacket mode (packets, an untrained 4+4 adapter: the cost of a trained one)
/// and in full mode (documents recomputed): output tokens/s, and p50/p99 time to first token seen by the client.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class ServeBenchmark
{
    public static BenchResult Run(string modelPath, string name, int[] concurrency, int documents, int documentTokens, int maxTokens, int requestsPerLevel, string? trace = null)
    {
        var figures = new Dictionary<string, double>();
        string root = Path.Combine(Path.GetTempPath(), $"kvpacket-bench-serve-{Environment.ProcessId}");
        string store = Path.Combine(root, "store"), socket = Path.Combine(root, "run", "d.sock");
        string weights = "";
        try
        {
            int vocab;
            using (var checkpoint = Core.Checkpoints.CheckpointLoader.Load(modelPath))
            using (var packets = PacketStore.Open(store))
            {
                vocab = checkpoint.Config.VocabSize;
                weights = checkpoint.TokenEmbedding.Type.ToString();
                packets.PutAdapterAsync(Adapter.Untrained("bench", checkpoint.Config.HiddenSize, 4, 4, 0), ModelFingerprint.Of(checkpoint), checkpoint.Config.HiddenSize)
                    .AsTask().GetAwaiter().GetResult();
            }
            using var stop = new CancellationTokenSource();
            string[] args = ["--model", modelPath, "--store", store, "--socket", socket, "--adapter", "bench", "--max-waiting", "1024", "--kv-tokens", "131072"];
            if (trace is not null) args = [.. args, "--trace", Path.GetFullPath(trace)];
            var (daemon, client) = StartDaemon(args, socket, stop.Token);
            using var _ = client;

            var random = new SeededRandom(17);
            var ids = new List<string>();
            for (int d = 0; d < documents; d++)
                ids.Add(client.SendJson(HttpMethod.Post, "/v1/packets", new { tokens = random.NextTokens(documentTokens, 3, vocab) }).GetProperty("id").GetString()!);
            foreach (string mode in new[] { "kvpacket", "full" })
            {
                Load(client, ids, mode, 1, 2, maxTokens, vocab); // warm-up: packets resident, JIT done
                foreach (int c in concurrency)
                {
                    var (ttfts, tokens, seconds) = Load(client, ids, mode, c, Math.Max(requestsPerLevel, c), maxTokens, vocab);
                    figures[$"{mode}_c{c}_output_tokens_per_s"] = tokens / seconds;
                    Statistics.RecordTtft(figures, $"{mode}_c{c}", ttfts);
                    Console.Error.WriteLine($"  {mode} c={c}: {tokens / seconds:F1} tok/s, TTFT p50 {figures[$"{mode}_c{c}_ttft_p50_ms"]:F1} ms");
                }
            }
            stop.Cancel();
            daemon.GetAwaiter().GetResult();
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
        figures["documents"] = documents;
        figures["document_tokens"] = documentTokens;
        figures["max_tokens"] = maxTokens;
        return new BenchResult("serve", name, weights, "F16", Environment.ProcessorCount, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    /// <summary>Runs <paramref name="requests"/> streaming requests over the packets <paramref name="ids"/>, <paramref name="concurrency"/> at a time.</summary>
    private static (double[] Ttft, long Tokens, double Seconds) Load(HttpClient client, List<string> ids, string mode, int concurrency, int requests, int maxTokens, int vocab) =>
        Load(client, i => new
        {
            prompt = new SeededRandom((ulong)i + 1000).NextTokens(16, 3, vocab), packets = ids, mode, max_tokens = maxTokens, temperature = 0, stream = true,
            stop_token_ids = Array.Empty<int>(),
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
