using System.CommandLine;
using System.Net.Http.Json;
using System.Text.Json;
using KvPacket.Daemon;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket serve</c> runs kvpacketd in the foreground; <c>ingest</c>, <c>query</c> and <c>status</c> are its
/// clients over the Unix socket.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class ServeCommands
{
    private static string DefaultSocket => Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime
        ? Path.Combine(runtime, "kvpacket", "kvpacketd.sock")
        : "";

    private static Option<string> Socket() => new("--socket") { Description = "kvpacketd's Unix socket", DefaultValueFactory = _ => DefaultSocket };

    public static IEnumerable<Command> Create() => [Serve(), Ingest(), Query(), Status()];

    private static Command Serve()
    {
        var command = new Command("serve", "Run kvpacketd in the foreground (flags as kvpacketd's: --model PATH --store DIR [--socket PATH] …)");
        command.TreatUnmatchedTokensAsErrors = false;
        command.SetAction(parse => Daemon.Daemon.RunAsync([.. parse.UnmatchedTokens]).GetAwaiter().GetResult());
        return command;
    }

    private static Command Ingest()
    {
        var socket = Socket();
        var files = new Argument<string[]>("files") { Description = "Documents: .txt as text (the daemon tokenizes), anything else as token ids (JSON array or whitespace-separated)", Arity = ArgumentArity.OneOrMore };
        var command = new Command("ingest", "Add documents to the daemon as packets (stored durably before each returns)") { socket, files };
        command.SetAction(parse =>
        {
            using var client = Client(parse.GetValue(socket)!);
            foreach (string file in parse.GetValue(files)!)
            {
                object body = file.EndsWith(".txt", StringComparison.OrdinalIgnoreCase)
                    ? new { text = File.ReadAllText(file) }
                    : new { tokens = ReadTokens(File.ReadAllText(file)) };
                var result = client.SendJson(HttpMethod.Post, "/v1/packets", body);
                Console.WriteLine($"{result.GetProperty("id").GetString()}  {result.GetProperty("tokens").GetInt32(),6} tokens  {file}");
            }
            return 0;
        });
        return command;
    }

    private static Command Query()
    {
        var socket = Socket();
        var packets = new Option<string[]>("--packets") { Description = "Packet ids, in prompt order", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [] };
        var mode = new Option<string>("--mode") { Description = "full, naive, kvpacket or kvlink", DefaultValueFactory = _ => "naive" };
        var maxTokens = new Option<int>("-n", "--max-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "0 for greedy", DefaultValueFactory = _ => 0 };
        var question = new Argument<string>("question") { Description = "The query: text, or token ids as 1,2,3 when the model has no tokenizer" };
        var command = new Command("query", "Ask a question over packets; the answer streams as it is generated") { socket, packets, mode, maxTokens, temperature, question };
        command.SetAction(parse =>
        {
            using var client = Client(parse.GetValue(socket)!);
            string text = parse.GetValue(question)!;
            object prompt = text.Split(',').All(p => int.TryParse(p, out _)) ? text.Split(',').Select(int.Parse).ToArray() : text;
            var body = new { prompt, packets = parse.GetValue(packets), mode = parse.GetValue(mode), max_tokens = parse.GetValue(maxTokens), temperature = parse.GetValue(temperature), stream = true,
                stream_options = new { include_usage = true } };
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
            using var response = client.Send(request, HttpCompletionOption.ResponseHeadersRead);
            if (!response.IsSuccessStatusCode) return Fail(response);
            using var reader = new StreamReader(response.Content.ReadAsStream());
            while (reader.ReadLine() is string line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
                var chunk = JsonDocument.Parse(line[6..]).RootElement;
                if (chunk.GetProperty("choices").GetArrayLength() == 0)
                {
                    Console.Error.WriteLine($"[{chunk.GetProperty("usage").GetProperty("completion_tokens").GetInt32()} tokens generated]");
                    continue;
                }
                var choice = chunk.GetProperty("choices")[0];
                if (choice.GetProperty("finish_reason").ValueKind != JsonValueKind.Null)
                {
                    var k = choice.GetProperty("kvpacket");
                    Console.WriteLine();
                    Console.Error.WriteLine($"[{choice.GetProperty("finish_reason").GetString()}; {k.GetProperty("mode").GetString()}; " +
                                            $"TTFT {k.GetProperty("ttft_ms").GetDouble():F1} ms; {k.GetProperty("packet_tokens").GetInt32()} packet tokens, {k.GetProperty("computed_prompt_tokens").GetInt32()} computed]");
                    continue;
                }
                string piece = choice.GetProperty("text").GetString() ?? "";
                if (prompt is string) Console.Write(piece);
                else if (choice.GetProperty("tokens").GetArrayLength() > 0) Console.Write($" {choice.GetProperty("tokens")[0].GetInt32()}"); // ids in, ids out
            }
            return 0;
        });
        return command;
    }

    private static Command Status()
    {
        var socket = Socket();
        var command = new Command("status", "The daemon's health and load") { socket };
        command.SetAction(parse =>
        {
            using var client = Client(parse.GetValue(socket)!);
            var health = client.SendJson(HttpMethod.Get, "/health");
            Console.WriteLine($"{health.GetProperty("status").GetString()}: {health.GetProperty("model").GetString()}, {health.GetProperty("packets").GetInt32()} packets");
            foreach (string line in client.GetStringAsync("/metrics").GetAwaiter().GetResult().Split('\n'))
                if (line.StartsWith("kvpacket_", StringComparison.Ordinal) && !line.Contains("_bucket", StringComparison.Ordinal)) Console.WriteLine("  " + line);
            return 0;
        });
        return command;
    }

    private static int[] ReadTokens(string text) =>
        text.TrimStart().StartsWith('[') ? JsonSerializer.Deserialize<int[]>(text)! : text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();

    private static HttpClient Client(string socket) => socket.Length == 0
        ? throw new ArgumentException("give --socket (XDG_RUNTIME_DIR is not set, so there is no default).")
        : UnixSocketClient.Create(socket);

    private static int Fail(HttpResponseMessage response)
    {
        Console.Error.WriteLine($"{(int)response.StatusCode}: {response.Content.ReadAsStringAsync().GetAwaiter().GetResult()}");
        return 1;
    }
}
