using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using KvPacket.Core.Numerics;

namespace KvPacket.Cli.Bench;

/// <summary>
/// An adversarial request barrage against a real kvpacketd process on a temporary socket and store: random JSON, deep
/// nesting, huge arrays, NaN/Infinity and out-of-range numbers, wrong types for every field, invalid UTF-8, malformed
/// HTTP framing, unknown routes, slowloris connections and 64 concurrent streams of which half disconnect mid-stream.
/// Raw bytes over the socket, so nothing is tidied up by a client library. Reports the status-code histogram (a 5xx
/// is a defect), the daemon's resident memory before and after, and whether a fixed greedy completion still gives the
/// same tokens afterwards.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class HostileBarrage
{
    /// <summary>
    /// The outcome: status code (0: the connection ended with no response) → count over both rounds, the daemon's RSS
    /// before and after each of the same rounds (a leak grows it round after round), the greedy check, and every 5xx but 505 — the
    /// protocol's own answer to an HTTP version the server does not speak, which Kestrel gives before any of our code runs.
    /// </summary>
    public sealed record Result(SortedDictionary<int, int> Statuses, long[] Rss, string[] Metrics, bool SameTokensAfter, IReadOnlyList<string> ServerErrors);

    public static Result Run(string modelPath, int seed, int rounds, int heapLimitMb)
    {
        string root = Path.Combine(Path.GetTempPath(), $"kvpacket-barrage-{Environment.ProcessId}");
        string socket = Path.Combine(root, "run", "d.sock");
        var start = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "kvpacketd")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in new[] { "--model", modelPath, "--store", Path.Combine(root, "store"), "--socket", socket, "--kv-tokens", "65536", "--max-body-bytes", "4000000" })
            start.ArgumentList.Add(arg);
        // A managed-heap limit, as a container would set: garbage is collected within it, a leak would end in OutOfMemory (a 5xx).
        if (heapLimitMb > 0) start.Environment["DOTNET_GCHeapHardLimit"] = $"0x{(long)heapLimitMb << 20:X}";
        using var daemon = Process.Start(start) ?? throw new InvalidOperationException("kvpacketd did not start");
        var log = new StringBuilder();
        daemon.OutputDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        daemon.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        daemon.BeginOutputReadLine();
        daemon.BeginErrorReadLine();
        try
        {
            for (int i = 0; !Healthy(socket); i++)
            {
                if (daemon.HasExited || i > 400) throw new InvalidOperationException($"kvpacketd did not come up: {log}");
                Thread.Sleep(50);
            }
            string probe = Post("/v1/completions", """{"prompt":"Document: Kafrem\nKafrem lies in Doubaith.\n\nQuestion: Where does Kafrem lie?\nAnswer:","max_tokens":8,"temperature":0}""");
            string before = Send(socket, probe).Body;
            var rss = new List<long> { Rss(daemon.Id) };
            var metrics = new List<string> { Metrics(socket) };

            var statuses = new SortedDictionary<int, int>();
            var serverErrors = new List<string>();
            void Count(string request, (int Status, string Body) response)
            {
                lock (statuses)
                {
                    statuses[response.Status] = statuses.GetValueOrDefault(response.Status) + 1;
                    if (response.Status >= 500 && response.Status != 505) serverErrors.Add($"{response.Status} for {Describe(request)}: {response.Body[..Math.Min(200, response.Body.Length)]}");
                }
            }
            for (int round = 0; round < rounds; round++)
            {
                foreach (string request in Requests(new SeededRandom((ulong)seed))) Count(request, Send(socket, request));
                Slowloris(socket, 16);
                lock (statuses) statuses[0] = statuses.GetValueOrDefault(0) + 16;
                Streams(socket, 64, Count);
                rss.Add(Rss(daemon.Id));
                metrics.Add(Metrics(socket));
            }
            string after = Send(socket, probe).Body;
            lock (log)
                serverErrors.AddRange(log.ToString().Split('\n').Where(l => l.Contains(" failed: ", StringComparison.Ordinal)).Select(l => "daemon log: " + l.Trim()));
            return new Result(statuses, [.. rss], [.. metrics], Tokens(before) == Tokens(after) && Tokens(before).Length > 0, serverErrors);
        }
        finally
        {
            if (!daemon.HasExited) daemon.Kill();
            daemon.WaitForExit();
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    private static bool Healthy(string socket)
    {
        try { return Send(socket, Get("/health")).Status == 200; }
        catch (SocketException) { return false; }   // not listening yet
    }

    /// <summary>The completion's text (the greedy tokens as the daemon decoded them).</summary>
    private static string Tokens(string body) => System.Text.Json.JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("text").GetString() ?? "";

    private static string Describe(string request) => request.Length > 120 ? request[..120].Replace("\r\n", " | ") + "…" : request.Replace("\r\n", " | ");

    private static string Get(string path) => $"GET {path} HTTP/1.1\r\nHost: kvpacketd\r\nConnection: close\r\n\r\n";

    private static string Post(string path, string body) => Post(path, Encoding.UTF8.GetBytes(body));

    private static string Post(string path, byte[] body) =>
        $"POST {path} HTTP/1.1\r\nHost: kvpacketd\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n" + Encoding.Latin1.GetString(body);

    /// <summary>The barrage, in a fixed order from <paramref name="random"/>: over 500 requests.</summary>
    private static IEnumerable<string> Requests(SeededRandom random)
    {
        string[] routes = ["/v1/completions", "/v1/packets"];
        // Random JSON values of every kind and shape.
        for (int i = 0; i < 160; i++) yield return Post(routes[i % 2], RandomJson(ref random, 4));
        // Deep nesting, in arrays and objects.
        foreach (int depth in new[] { 10, 64, 65, 100, 1000, 10_000, 100_000 })
        {
            yield return Post("/v1/completions", new string('[', depth) + new string(']', depth));
            yield return Post("/v1/completions", """{"prompt":""" + new string('[', depth) + "1" + new string(']', depth) + "}");
            yield return Post("/v1/packets", string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth));
        }
        // Huge arrays and strings (some past the body limit).
        foreach (int n in new[] { 10_000, 100_000, 1_000_000 })
        {
            yield return Post("/v1/completions", $$"""{"prompt":[{{string.Join(',', Enumerable.Repeat(3, n))}}],"max_tokens":1}""");
            yield return Post("/v1/packets", $$"""{"tokens":[{{string.Join(',', Enumerable.Repeat(5, n))}}]}""");
            yield return Post("/v1/packets", $$"""{"text":"{{new string('x', n)}}"}""");
            yield return Post("/v1/completions", $$"""{"prompt":[1],"stop_token_ids":[{{string.Join(',', Enumerable.Repeat(2, n))}}]}""");
        }
        // Numbers: NaN, Infinity, overflow, underflow, negative zero, exponents, fractions where integers belong.
        string[] numbers = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0.5", "1e9", "-1", "2147483648", "-2147483649", "9223372036854775808", "1.0", "00", "+1", ".5", "0x10"];
        string[] numericFields = ["max_tokens", "temperature", "top_p", "top_k", "seed"];
        foreach (string field in numericFields)
            foreach (string number in numbers)
                yield return Post("/v1/completions", $$"""{"prompt":[1,2],"{{field}}":{{number}}}""");
        foreach (string number in numbers) yield return Post("/v1/completions", $$"""{"prompt":[{{number}}]}""");
        foreach (string number in numbers) yield return Post("/v1/packets", $$"""{"tokens":[1,{{number}}]}""");
        // Wrong types for every field.
        string[] values = ["null", "true", "\"x\"", "\"\"", "[]", "{}", "[null]", "[\"a\",1]", "[[1]]", "{\"a\":1}", "-5", "3.5"];
        string[] fields = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stop", "stop_token_ids", "packets", "documents", "mode", "model", "n"];
        foreach (string field in fields)
            foreach (string value in values)
                yield return Post("/v1/completions", field == "prompt" ? $$"""{"prompt":{{value}}}""" : $$"""{"prompt":[1,2],"{{field}}":{{value}}}""");
        foreach (string value in values) yield return Post("/v1/packets", $$"""{"tokens":{{value}}}""");
        foreach (string value in values) yield return Post("/v1/packets", $$"""{"text":{{value}}}""");
        foreach (string value in values) yield return Post("/v1/completions", $$"""{"prompt":[1],"packets":[{{value}}]}""");
        // Invalid UTF-8: in strings, in names, as the whole body; overlong forms, lone surrogates, escapes.
        byte[][] invalid = [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0x80], [0xE2, 0x82], [0xFE, 0xFF]];
        foreach (byte[] bad in invalid)
        {
            yield return Post("/v1/completions", [.. "{\"prompt\":\""u8.ToArray(), .. bad, .. "\"}"u8.ToArray()]);
            yield return Post("/v1/completions", [.. "{\"prompt\":[1],\"mode\":\""u8.ToArray(), .. bad, .. "\"}"u8.ToArray()]);
            yield return Post("/v1/completions", [.. "{\"prompt\":[1],\"stop\":[\""u8.ToArray(), .. bad, .. "\"]}"u8.ToArray()]);
            yield return Post("/v1/packets", [.. "{\"text\":\""u8.ToArray(), .. bad, .. "\"}"u8.ToArray()]);
            yield return Post("/v1/completions", [.. "{\""u8.ToArray(), .. bad, .. "\":1}"u8.ToArray()]);
            yield return Post("/v1/completions", bad);
        }
        foreach (string escape in new[] { "\\ud800", "\\udfff", "\\ud800\\u0041", "\\u0000", "\\uZZZZ", "\\x41", "\\" })
        {
            yield return Post("/v1/completions", $$"""{"prompt":"a{{escape}}b"}""");
            yield return Post("/v1/completions", $$"""{"prompt":[1],"mode":"{{escape}}"}""");
        }
        // Malformed HTTP: framing, lengths, methods, versions, headers.
        string body = """{"prompt":[1,2],"max_tokens":1}""";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nFFFFFFFFFFFFFFFF\r\n{body}\r\n0\r\n\r\n";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{body}\r\n0\r\n\r\n";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: -1\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 99999999999999999999\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Type: text/plain\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}";
        yield return $"POST /v1/completions HTTP/9.9\r\nHost: k\r\nConnection: close\r\n\r\n";
        yield return "GARBAGE\r\n\r\n";
        yield return "\r\n\r\n";
        yield return $"POST /v1/completions HTTP/1.1\r\nHost: k\r\n{new string('X', 70_000)}: y\r\nConnection: close\r\n\r\n";
        yield return $"GET /{new string('a', 20_000)} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
        foreach (string method in new[] { "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "BREW" })
            yield return $"{method} /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        // Unknown routes and ids.
        foreach (string path in new[] { "/", "/v2/completions", "/v1/packets/..%2f..%2fetc%2fpasswd", "/v1/packets/%00", "/v1/packets/" + new string('f', 64), "/v1/models/x", "/metrics?x=1", "/health/../health" })
        {
            yield return Get(path);
            yield return $"DELETE {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n";
        }
        // Valid requests in between: the daemon must keep serving.
        for (int i = 0; i < 10; i++) yield return Post("/v1/completions", $$"""{"prompt":[1,{{3 + i}}],"max_tokens":2,"temperature":0}""");
    }

    /// <summary>A random JSON value, at most <paramref name="depth"/> deep, with the daemon's field names mixed in.</summary>
    private static string RandomJson(ref SeededRandom random, int depth)
    {
        string[] names = ["prompt", "max_tokens", "temperature", "top_p", "stream", "stop", "packets", "documents", "mode", "tokens", "text", "seed", "top_k", "x"];
        ulong kind = random.NextUInt64() % (depth > 0 ? 8UL : 5UL);
        switch (kind)
        {
            case 0: return "null";
            case 1: return random.NextUInt64() % 2 == 0 ? "true" : "false";
            case 2: return ((long)random.NextUInt64() >> (int)(random.NextUInt64() % 64)).ToString(System.Globalization.CultureInfo.InvariantCulture);
            case 3: return (BitConverter.Int64BitsToDouble((long)random.NextUInt64()) is var d && double.IsFinite(d) ? d : 0.5).ToString("R", System.Globalization.CultureInfo.InvariantCulture);
            case 4: return "\"" + new string((char)('a' + random.NextUInt64() % 26), (int)(random.NextUInt64() % 8)) + "\"";
            case 5:
            case 6:
            {
                var builder = new StringBuilder("{");
                int n = (int)(random.NextUInt64() % 5);
                for (int i = 0; i < n; i++)
                {
                    if (i > 0) builder.Append(',');
                    builder.Append('"').Append(names[random.NextUInt64() % (ulong)names.Length]).Append("\":").Append(RandomJson(ref random, depth - 1));
                }
                return builder.Append('}').ToString();
            }
            default:
            {
                int n = (int)(random.NextUInt64() % 6);
                var items = new string[n];
                for (int i = 0; i < n; i++) items[i] = RandomJson(ref random, depth - 1);
                return "[" + string.Join(',', items) + "]";
            }
        }
    }

    /// <summary>Sends raw request bytes and reads the response until the server closes (10 s at most).</summary>
    private static (int Status, string Body) Send(string socket, string request)
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.ReceiveTimeout = client.SendTimeout = 10_000;
        client.Connect(new UnixDomainSocketEndPoint(socket));
        try { client.Send(Encoding.Latin1.GetBytes(request)); }
        catch (SocketException) { }   // the server may refuse the rest of an oversized request and answer early
        var response = new MemoryStream();
        var buffer = new byte[65536];
        try
        {
            for (int n; (n = client.Receive(buffer)) > 0;) response.Write(buffer, 0, n);
        }
        catch (SocketException) { }
        string text = Encoding.UTF8.GetString(response.ToArray());
        if (!text.StartsWith("HTTP/1.1 ", StringComparison.Ordinal) || text.Length < 12 || !int.TryParse(text.AsSpan(9, 3), out int status)) return (0, text);
        int bodyStart = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        string body = bodyStart < 0 ? "" : text[(bodyStart + 4)..];
        if (text.Contains("Transfer-Encoding: chunked", StringComparison.OrdinalIgnoreCase)) body = Dechunk(body);
        return (status, body);
    }

    private static string Dechunk(string chunked)
    {
        var body = new StringBuilder();
        int at = 0;
        while (at < chunked.Length)
        {
            int line = chunked.IndexOf("\r\n", at, StringComparison.Ordinal);
            if (line < 0 || !int.TryParse(chunked.AsSpan(at, line - at), System.Globalization.NumberStyles.HexNumber, null, out int size) || size == 0) break;
            body.Append(chunked, line + 2, Math.Min(size, chunked.Length - line - 2));
            at = line + 2 + size + 2;
        }
        return body.ToString();
    }

    /// <summary>Connections that send a request's headers a byte at a time, then go quiet and close.</summary>
    private static void Slowloris(string socket, int connections)
    {
        byte[] partial = "POST /v1/completions HTTP/1.1\r\nHost: k\r\nContent-Length: 1000\r\n"u8.ToArray();
        var sockets = new List<Socket>();
        for (int c = 0; c < connections; c++)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            s.Connect(new UnixDomainSocketEndPoint(socket));
            sockets.Add(s);
        }
        for (int i = 0; i < partial.Length; i++)
        {
            foreach (var s in sockets) try { s.Send(partial.AsSpan(i, 1)); } catch (SocketException) { }
            Thread.Sleep(20);
        }
        foreach (var s in sockets) s.Dispose();
    }

    /// <summary><paramref name="count"/> concurrent streaming completions; every other one disconnects after its first event.</summary>
    private static void Streams(string socket, int count, Action<string, (int, string)> record)
    {
        string request = Post("/v1/completions", """{"prompt":[1,5,9],"max_tokens":48,"stream":true,"temperature":0.8,"seed":5}""");
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = count }, i =>
        {
            if (i % 2 == 0) { record(request, Send(socket, request)); return; }
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            client.Connect(new UnixDomainSocketEndPoint(socket));
            client.Send(Encoding.Latin1.GetBytes(request));
            var buffer = new byte[4096];
            int n = client.Receive(buffer);
            string head = Encoding.UTF8.GetString(buffer, 0, n);
            record(request, (head.StartsWith("HTTP/1.1 ", StringComparison.Ordinal) && int.TryParse(head.AsSpan(9, 3), out int status) ? status : 0, ""));
        });
    }

    /// <summary>The daemon's own memory figures from /metrics: managed heap, its free space, GC-committed memory, KV blocks and packets.</summary>
    private static string Metrics(string socket)
    {
        var figures = Send(socket, Get("/metrics")).Body.Split('\n')
            .Where(l => l.StartsWith("kvpacket_gc_", StringComparison.Ordinal) || l.StartsWith("kvpacket_kv_blocks_in_use", StringComparison.Ordinal) || l.StartsWith("kvpacket_packets ", StringComparison.Ordinal))
            .Select(l => l.Split(' ')).Where(p => p.Length == 2 && double.TryParse(p[1], System.Globalization.CultureInfo.InvariantCulture, out _))
            .Select(p => p[0].StartsWith("kvpacket_gc_", StringComparison.Ordinal)
                ? $"{p[0]["kvpacket_gc_".Length..]} {double.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture) / 1048576:F0} MiB"
                : $"{p[0]["kvpacket_".Length..]} {p[1]}");
        return string.Join(", ", figures);
    }

    /// <summary>Resident memory of process <paramref name="pid"/> (VmRSS).</summary>
    private static long Rss(int pid)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        return 0;
    }
}
