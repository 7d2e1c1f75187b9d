using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Engine.Serving;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Daemon.Tests;

/// <summary>Each test starts a real kvpacketd process on a temporary socket and store.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class DaemonTests
{
    private static int[] Tokens(int count, int seed) => Enumerable.Range(0, count).Select(i => 3 + (i * 37 + seed * 101) % 500).ToArray();

    /// <summary>Streams a one-choice completion (with <c>stream_options.include_usage</c>): its tokens, its finishing chunk and the usage.</summary>
    private static async Task<(List<int> Tokens, JsonElement Final, JsonElement Usage)> StreamAsync(HttpClient client, object body, CancellationToken cancel = default)
    {
        var json = JsonSerializer.SerializeToNode(body)!.AsObject();
        json["stream_options"] = new System.Text.Json.Nodes.JsonObject { ["include_usage"] = true };
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(json) };
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        var tokens = new List<int>();
        JsonElement final = default, usage = default;
        while (await reader.ReadLineAsync(cancel) is string line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            string data = line[6..];
            if (data == "[DONE]") break;
            var chunk = JsonDocument.Parse(data).RootElement.Clone();
            if (chunk.GetProperty("choices").GetArrayLength() == 0) { usage = chunk.GetProperty("usage"); continue; }
            var choice = chunk.GetProperty("choices")[0];
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.Null) tokens.AddRange(choice.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
            else final = choice;
        }
        return (tokens, final, usage);
    }

    [Fact]
    public async Task A_streamed_completion_over_the_socket_equals_the_in_process_result_for_the_same_seed()
    {
        using var temp = Fixtures.TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"));
        int[] document = Tokens(40, 1), prompt = Tokens(7, 2);
        var packet = await daemon.PostAsync("/v1/packets", new { tokens = document }, 201);
        string id = packet.GetProperty("id").GetString()!;
        var (streamed, final, _) = await StreamAsync(daemon.Client, new { prompt, max_tokens = 24, temperature = 0.8, top_p = 0.9, seed = 7, stream = true, packets = new[] { id }, mode = "naive" });
        Assert.Equal("length", final.GetProperty("finish_reason").GetString());
        Assert.Equal(1 + 40, final.GetProperty("kvpacket").GetProperty("packet_tokens").GetInt32());   // the cached BOS prefix and the packet

        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(DaemonProcess.Stories),
            new KvPacketEngineOptions { Model = new TransformerOptions { KvCacheTokens = 16384, MaxBatchTokens = 256, MaxBatchSequences = 64 } });
        var handle = await engine.AddPacketAsync(document);
        Assert.Equal(id, handle.Id);
        var expected = new List<int>();
        await foreach (var e in engine.GenerateAsync(new EngineRequest
        {
            Prefix = [1], Packets = [handle.Id], Prompt = prompt, Mode = RagMode.Naive,
            Limits = new GenerationLimits { MaxTokens = 24, Sampling = new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = 7 } },
        }))
            if (!e.IsFinal) expected.Add(e.Token);
        Assert.Equal(expected, streamed);

        var plain = await daemon.PostAsync("/v1/completions", new { prompt, max_tokens = 24, temperature = 0.8, top_p = 0.9, seed = 7, packets = new[] { id }, mode = "naive" });
        Assert.Equal(expected, plain.GetProperty("choices")[0].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
    }

    [Fact]
    public async Task Thirty_two_concurrent_streams_sharing_packets_complete_and_every_block_comes_back()
    {
        using var temp = Fixtures.TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"));
        var ids = await AddPacketsAsync(daemon, 30, 40, 50);
        object Body(int i) => new { prompt = Tokens(6, 10 + i % 4), max_tokens = 20, temperature = 0, stream = true, packets = ids, mode = i % 2 == 0 ? "naive" : "full" };
        var solo = new Dictionary<int, List<int>>();
        for (int i = 0; i < 8; i++) solo[i] = (await StreamAsync(daemon.Client, Body(i))).Tokens;
        double resident = await daemon.MetricAsync("kvpacket_kv_blocks_in_use");

        var all = await Task.WhenAll(Enumerable.Range(0, 32).Select(i => Task.Run(() => StreamAsync(daemon.Client, Body(i)))));
        for (int i = 0; i < 32; i++)
        {
            Assert.Equal(solo[i % 8], all[i].Tokens);
            Assert.Equal(20, all[i].Usage.GetProperty("completion_tokens").GetInt32());
        }
        Assert.True(await daemon.MetricAsync("kvpacket_scheduler_steps") < 32 * 20, "the streams were not batched");
        Assert.Equal(resident, await daemon.MetricAsync("kvpacket_kv_blocks_in_use"));
    }

    /// <summary>Packets of seeded documents of these lengths (document d seeded d), stored through the API; their ids.</summary>
    private static async Task<List<string>> AddPacketsAsync(DaemonProcess daemon, params int[] lengths)
    {
        var ids = new List<string>();
        for (int d = 0; d < lengths.Length; d++) ids.Add((await daemon.PostAsync("/v1/packets", new { tokens = Tokens(lengths[d], d) }, 201)).GetProperty("id").GetString()!);
        return ids;
    }

    /// <summary>The greedy tokens of one fixed query over <paramref name="ids"/> in naive mode, streamed.</summary>
    private static async Task<List<int>> AnswerNaivelyAsync(DaemonProcess daemon, List<string> ids, int maxTokens) =>
        (await StreamAsync(daemon.Client, new { prompt = Tokens(6, 3), max_tokens = maxTokens, temperature = 0, stream = true, packets = ids, mode = "naive" })).Tokens;

    /// <summary>A CPU daemon on <paramref name="store"/> adds packets of these lengths and answers over them naively; their ids and its tokens.</summary>
    private static async Task<(List<string> Ids, List<int> Answer)> StoreAndAnswerOnTheCpuAsync(string store, int maxTokens, params int[] lengths)
    {
        await using var daemon = await DaemonProcess.StartAsync(store, "--device", "cpu");
        var ids = await AddPacketsAsync(daemon, lengths);
        return (ids, await AnswerNaivelyAsync(daemon, ids, maxTokens));
    }

    [Fact]
    public async Task With_nothing_resident_every_request_reads_its_packets_from_the_store_and_answers_the_same()
    {
        using var temp = Fixtures.TempDirectory();
        string store = Path.Combine(temp.Path, "store");
        var (ids, expected) = await StoreAndAnswerOnTheCpuAsync(store, 12, 40, 49);
        await using (var daemon = await DaemonProcess.StartAsync(store, "--device", "cpu", "--resident-blocks", "0"))
        {
            for (int round = 1; round <= 3; round++)
            {
                var tokens = await AnswerNaivelyAsync(daemon, ids, 12);
                Assert.Equal(expected, tokens);
                Assert.Equal(2 * round, await daemon.MetricAsync("kvpacket_packet_store_loads"));
                Assert.Equal(0, await daemon.MetricAsync("kvpacket_packet_resident_hits"));
            }
            Assert.True(await daemon.MetricAsync("kvpacket_packet_store_load_bytes") > 0);
            Assert.True(await daemon.MetricAsync("kvpacket_packet_store_load_seconds") > 0);
        }
    }

    [Fact]
    public async Task On_the_ilgpu_backend_it_serves_packets_and_answers_as_on_the_cpu()
    {
        // ILGPU's CPU accelerator here (no GPU in CI): the same kernels as on a GPU, the same greedy tokens as the SIMD backend.
        using var temp = Fixtures.TempDirectory();
        string store = Path.Combine(temp.Path, "store");
        var (ids, expected) = await StoreAndAnswerOnTheCpuAsync(store, 8, 30, 37);
        await using (var daemon = await DaemonProcess.StartAsync(store, "--device", "ilgpu", "--kv-tokens", "2048"))
        {
            Assert.Equal(expected, await AnswerNaivelyAsync(daemon, ids, 8));
            Assert.Equal(2, await daemon.MetricAsync("kvpacket_packet_store_loads"));
        }
    }

    [Fact]
    public async Task Concurrent_requests_whose_store_loaded_packets_overfill_the_cache_wait_and_all_complete()
    {
        using var temp = Fixtures.TempDirectory();
        string store = Path.Combine(temp.Path, "store");
        List<string> ids;
        await using (var daemon = await DaemonProcess.StartAsync(store, "--device", "cpu"))
            ids = await AddPacketsAsync(daemon, 100, 100);
        // 64 blocks of 16 tokens; each request holds its own copy of both packets (14 blocks) while it runs.
        await using (var daemon = await DaemonProcess.StartAsync(store, "--device", "cpu", "--resident-blocks", "0", "--kv-tokens", "1024"))
        {
            var all = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Task.Run(() =>
                StreamAsync(daemon.Client, new { prompt = Tokens(6, i), max_tokens = 8, temperature = 0, stream = true, packets = ids, mode = "naive" }))));
            Assert.All(all, r => Assert.Equal(8, r.Tokens.Count));
            Assert.Equal(1, await daemon.MetricAsync("kvpacket_kv_prefix_blocks"));   // the BOS prefix, kept as a packet
            Assert.Equal(1, await daemon.MetricAsync("kvpacket_kv_blocks_in_use"));
        }
    }

    [Fact]
    public async Task Bad_requests_get_the_right_status_and_message_and_the_daemon_keeps_serving()
    {
        using var temp = Fixtures.TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"), "--max-body-bytes", "4096", "--max-tokens", "256");
        async Task Expect(HttpStatusCode status, string contains, HttpContent content, string path = "/v1/completions")
        {
            var response = await daemon.Client.PostAsync(path, content);
            string text = await response.Content.ReadAsStringAsync();
            Assert.True(status == response.StatusCode, $"{path}: expected {status}, got {(int)response.StatusCode} {text}");
            Assert.Contains(contains, JsonDocument.Parse(text).RootElement.GetProperty("error").GetProperty("message").GetString());
        }
        await Expect(HttpStatusCode.BadRequest, "not valid JSON", new StringContent("{\"prompt\": [1, 2", Encoding.UTF8, "application/json"));
        await Expect(HttpStatusCode.BadRequest, "'max_tokens' must be an integer", JsonContent.Create(new { prompt = new[] { 1, 5 }, max_tokens = "many" }));
        await Expect(HttpStatusCode.BadRequest, "'temperature' must be a number", JsonContent.Create(new { prompt = new[] { 1, 5 }, temperature = "hot" }));
        await Expect(HttpStatusCode.BadRequest, "'max_tokens' must be between 1 and 256", JsonContent.Create(new { prompt = new[] { 1, 5 }, max_tokens = -3 }));
        await Expect(HttpStatusCode.BadRequest, "'max_tokens' must be between 1 and 256", JsonContent.Create(new { prompt = new[] { 1, 5 }, max_tokens = 1_000_000 }));
        await Expect(HttpStatusCode.BadRequest, "no tokenizer", JsonContent.Create(new { prompt = "Once upon a time" }));
        await Expect(HttpStatusCode.BadRequest, "'mode' must be one of", JsonContent.Create(new { prompt = new[] { 1, 5 }, mode = "epic", packets = new[] { "x" } }));
        await Expect(HttpStatusCode.NotFound, "no packet 'feedface'", JsonContent.Create(new { prompt = new[] { 1, 5 }, packets = new[] { "feedface" }, mode = "naive" }));
        await Expect(HttpStatusCode.BadRequest, "outside the vocabulary", JsonContent.Create(new { prompt = new[] { 1, 5000 } }));
        await Expect(HttpStatusCode.RequestEntityTooLarge, "too large", JsonContent.Create(new { prompt = Enumerable.Repeat(5, 3000).ToArray() }));
        await Expect(HttpStatusCode.BadRequest, "has no chat template", JsonContent.Create(new { messages = Array.Empty<object>() }), "/v1/chat/completions");
        Assert.Equal(HttpStatusCode.NotFound, (await daemon.Client.GetAsync("/v1/packets/0123")).StatusCode);
        foreach (string notAnObject in new[] { "[]", "null", "5", "\"x\"", "true" })
            foreach (string path in new[] { "/v1/packets", "/v1/completions" })
                await Expect(HttpStatusCode.BadRequest, "must be a JSON object", new StringContent(notAnObject, Encoding.UTF8, "application/json"), path);
        // A chunked body whose chunk size overflows: Kestrel's parse error is a 400 with our JSON error, not a 500.
        using (var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            await socket.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(daemon.Socket));
            await socket.SendAsync(Encoding.ASCII.GetBytes("POST /v1/packets HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n"));
            var reply = new byte[4096];
            int read = await socket.ReceiveAsync(reply);
            string head = Encoding.ASCII.GetString(reply, 0, read);
            Assert.True(head.StartsWith("HTTP/1.1 400", StringComparison.Ordinal), head);
        }

        // A client that disconnects mid-stream: its request is cancelled and its blocks freed; the daemon goes on.
        double before = await daemon.MetricAsync("kvpacket_kv_blocks_in_use");
        using (var cancel = new CancellationTokenSource())
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(new { prompt = new[] { 1, 5 }, max_tokens = 200, stream = true }) };
            using var response = await daemon.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel.Token);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel.Token));
            await reader.ReadLineAsync(cancel.Token);
            cancel.Cancel();
        }
        for (int i = 0; i < 100 && await daemon.MetricAsync("kvpacket_kv_blocks_in_use") != before; i++) await Task.Delay(20);
        Assert.Equal(before, await daemon.MetricAsync("kvpacket_kv_blocks_in_use"));
        Assert.True((await daemon.Client.GetAsync("/health")).IsSuccessStatusCode);
        var ok = await daemon.PostAsync("/v1/completions", new { prompt = new[] { 1, 5 }, max_tokens = 3, temperature = 0 });
        Assert.Equal(3, ok.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task The_socket_is_owner_only_a_second_daemon_on_the_store_is_refused_and_SIGTERM_drains_in_flight_work()
    {
        using var temp = Fixtures.TempDirectory();
        string store = Path.Combine(temp.Path, "store");
        await using var daemon = await DaemonProcess.StartAsync(store);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(daemon.Socket));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.GetDirectoryName(daemon.Socket)!));

        await using (var second = DaemonProcess.Launch(store, Path.Combine(temp.Path, "other.sock")))
        {
            Assert.Equal(3, await second.WaitForExitAsync(TimeSpan.FromSeconds(30)));
            Assert.Contains($"locked by pid {daemon.Pid}", second.Log);
        }

        // A long stream in flight when SIGTERM arrives still completes; a new request after that is refused (503, or no
        // connection at all once the listener is closed); then the daemon exits 0 and removes its socket.
        var inFlight = StreamAsync(daemon.Client, new { prompt = new[] { 1, 5 }, max_tokens = 300, temperature = 0, stream = true });
        await Task.Delay(100);
        using var late = DaemonProcess.ClientFor(daemon.Socket);
        Assert.True((await late.GetAsync("/health")).IsSuccessStatusCode); // a keep-alive connection opened before the signal
        daemon.Signal("TERM");
        await Task.Delay(200);
        try
        {
            var refused = await late.PostAsync("/v1/completions", JsonContent.Create(new { prompt = new[] { 1, 5 }, max_tokens = 2 }));
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        }
        catch (HttpRequestException) { } // the listener and idle connections are already closed
        var (tokens, final, _) = await inFlight;
        Assert.Equal(300, tokens.Count);
        Assert.Equal("length", final.GetProperty("finish_reason").GetString());
        Assert.Equal(0, await daemon.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        Assert.False(File.Exists(daemon.Socket));
    }

    [Fact]
    public async Task A_full_queue_answers_429_and_the_admitted_requests_still_complete()
    {
        using var temp = Fixtures.TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"), "--max-waiting", "1");
        var responses = await Task.WhenAll(Enumerable.Range(0, 120).Select(i => Task.Run(() =>
            daemon.Client.PostAsync("/v1/completions", JsonContent.Create(new { prompt = Tokens(5, i), max_tokens = 40, temperature = 0 })))));
        var statuses = responses.Select(r => r.StatusCode).ToArray();
        Assert.Contains(HttpStatusCode.TooManyRequests, statuses);
        Assert.All(statuses, s => Assert.True(s is HttpStatusCode.OK or HttpStatusCode.TooManyRequests, $"unexpected {s}"));
        var overloaded = responses.First(r => r.StatusCode == HttpStatusCode.TooManyRequests);
        Assert.Contains("queue is full", await overloaded.Content.ReadAsStringAsync());
        Assert.True((await daemon.Client.GetAsync("/health")).IsSuccessStatusCode);
    }

    [Fact]
    public async Task SIGKILL_during_ingestion_loses_no_packet_whose_ingest_had_returned()
    {
        using var temp = Fixtures.TempDirectory();
        string store = Path.Combine(temp.Path, "store");
        var returned = new List<string>();
        await using (var daemon = await DaemonProcess.StartAsync(store))
        {
            // Killed mid-ingestion once a few ingests have returned (not after a fixed time: a loaded machine may not have finished one).
            int count = 0;
            var killer = Task.Run(async () =>
            {
                while (Volatile.Read(ref count) < 5) await Task.Delay(10);
                await Task.Delay(150);
                daemon.Signal("KILL");
            });
            for (int d = 0; ; d++)
            {
                try
                {
                    returned.Add((await daemon.PostAsync("/v1/packets", new { tokens = Tokens(20 + d % 50, d) }, 201)).GetProperty("id").GetString()!);
                    Interlocked.Increment(ref count);
                }
                catch (Exception e) when (e is HttpRequestException or IOException or InvalidOperationException or TaskCanceledException) { break; }
            }
            await killer;
        }
        Assert.NotEmpty(returned);
        await using var restarted = await DaemonProcess.StartAsync(store);
        var listed = JsonDocument.Parse(await restarted.Client.GetStringAsync("/v1/packets")).RootElement.GetProperty("data")
            .EnumerateArray().Select(p => p.GetProperty("id").GetString()).ToHashSet();
        Assert.All(returned, id => Assert.Contains(id, listed));
        // And they are usable: a completion over the last one runs.
        var done = await restarted.PostAsync("/v1/completions", new { prompt = new[] { 1, 5 }, max_tokens = 2, temperature = 0, packets = new[] { returned[^1] }, mode = "naive" });
        Assert.Equal(2, done.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task With_trace_the_daemon_writes_a_perfetto_trace_of_its_steps_requests_and_packet_builds_at_shutdown()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "serve.trace.json");
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"), "--trace", path);
        string id = (await daemon.PostAsync("/v1/packets", new { tokens = Tokens(40, 1) }, 201)).GetProperty("id").GetString()!;
        await daemon.PostAsync("/v1/completions", new { prompt = Tokens(7, 2), max_tokens = 6, packets = new[] { id }, mode = "naive" });
        daemon.Signal("TERM");
        Assert.Equal(0, await daemon.WaitForExitAsync(TimeSpan.FromSeconds(30)));

        var spans = JsonDocument.Parse(File.ReadAllBytes(path)).RootElement.GetProperty("traceEvents").EnumerateArray()
            .Where(e => e.GetProperty("ph").GetString() == "X").Select(e => e.GetProperty("name").GetString()).ToList();
        Assert.Contains("packet build", spans);
        Assert.Contains("step", spans);
        Assert.Contains("queued", spans);
        Assert.Contains("prefill", spans);
        Assert.Equal(5, spans.Count(s => s == "decode"));
    }
}
