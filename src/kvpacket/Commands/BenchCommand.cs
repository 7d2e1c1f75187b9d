using System.CommandLine;
using KvPacket.Cli.Bench;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket bench decode|prefill</c>: end-to-end speed with the machine's own rooflines measured in the same run.
/// Decode is compared with read bandwidth ÷ bytes of weights read per token; prefill with the measured FMA rate.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var command = new Command("bench", "Measure decode and prefill speed against this machine's rooflines");
        command.Subcommands.Add(Create("decode", "Decode tokens/s and allocations per token", Decode));
        command.Subcommands.Add(Create("prefill", "Prefill GFLOP/s", Prefill));
        command.Subcommands.Add(CreateTokenize());
        command.Subcommands.Add(CreateStore());
        command.Subcommands.Add(CreateServe());
        command.Subcommands.Add(CreateSharedTier());
        command.Subcommands.Add(CreateBarrage());
        command.Subcommands.Add(Create("rag", "TTFT, prefilled tokens and document FLOPs of one RAG request in every mode", Rag));
        return command;
    }

    private static Command CreateTokenize()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.json, tokenizer.model or a model directory", Required = true };
        var repeats = new Option<int>("--repeats") { Description = "Runs; the median is reported", DefaultValueFactory = _ => 5 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("tokenize", "Encode MB/s on 1 MB English-like and mixed-script text, and allocations per call") { tokenizer, repeats, output };
        command.SetAction(parse =>
        {
            string path = parse.GetValue(tokenizer)!;
            var result = TokenizerBenchmark.Run(TokenizerLoader.Load(path), Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetDirectoryName(Path.GetFullPath(path)) ?? path)), parse.GetValue(repeats));
            result.Print();
            result.Save(parse.GetValue(output)!);
            return 0;
        });
        return command;
    }

    private static Command CreateStore()
    {
        var shape = new Option<string>("--shape") { Description = "Model card whose KV shape the packets have", DefaultValueFactory = _ => "qwen2.5-0.5b" };
        var tokens = new Option<int>("--packet-tokens") { Description = "Tokens per packet", DefaultValueFactory = _ => 512 };
        var packets = new Option<int>("--packets") { Description = "Packets loaded per pass", DefaultValueFactory = _ => 64 };
        var passes = new Option<int>("--passes") { Description = "Load passes (alternating with plain reads); medians reported", DefaultValueFactory = _ => 7 };
        var recovery = new Option<double>("--recovery-gb") { Description = "Store size for the recovery measurement", DefaultValueFactory = _ => 2.0 };
        var lookups = new Option<int>("--lookup-packets") { Description = "Packets in the store for the lookup latency", DefaultValueFactory = _ => 100_000 };
        var directory = new Option<string>("--dir") { Description = "Scratch directory (removed afterwards)", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), $"kvpacket-bench-store-{Environment.ProcessId}") };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("store", "Packet store: ingest, load vs plain reads, recovery, index lookup") { shape, tokens, packets, passes, recovery, lookups, directory, output };
        command.SetAction(parse =>
        {
            string scratch = parse.GetValue(directory)!;
            try
            {
                var result = StoreBenchmark.Run(Core.Model.ModelCard.Find(parse.GetValue(shape)!), scratch, parse.GetValue(tokens), parse.GetValue(packets),
                    parse.GetValue(passes), (long)(parse.GetValue(recovery) * 1e9), parse.GetValue(lookups));
                result.Print();
                result.Save(parse.GetValue(output)!);
            }
            finally
            {
                if (Directory.Exists(scratch)) Directory.Delete(scratch, recursive: true);
            }
            return 0;
        });
        return command;
    }

    private static Command CreateServe()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var concurrency = new Option<string>("--concurrency") { Description = "Concurrency levels", DefaultValueFactory = _ => "1,4,16,64" };
        var documents = new Option<int>("--documents") { Description = "Packets per request", DefaultValueFactory = _ => 4 };
        var documentTokens = new Option<int>("--document-tokens") { Description = "Tokens per document", DefaultValueFactory = _ => 256 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request", DefaultValueFactory = _ => 32 };
        var requests = new Option<int>("--requests") { Description = "Requests per level (at least the concurrency)", DefaultValueFactory = _ => 16 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var trace = new Option<string?>("--trace") { Description = "Write the daemon's Chrome / Perfetto trace (steps, requests, packet loads) here" };
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Query tokens per request", DefaultValueFactory = _ => 16 };
        var sampled = new Option<bool>("--sampled") { Description = "Also run kvpacket with seeded draws (temperature 0.8, top-k 50, top-p 0.95): on the backend, and on the host" };
        var device = DeviceOption.Create("auto");
        var command = new Command("serve", "Load generator against kvpacketd: output tokens/s and TTFT p50/p99, kvpacket vs full, per concurrency")
        {
            model, shape, concurrency, documents, documentTokens, maxTokens, requests, output, trace, promptTokens, sampled, device,
        };
        command.SetAction(parse =>
        {
            string? path = parse.GetValue(model);
            string name;
            if (path is null)
            {
                var (checkpoint, cardName) = BenchModel.Open(null, parse.GetValue(shape) ?? throw new ArgumentException("Give --model PATH or --shape NAME."), DType.BF16);
                path = checkpoint.Source;
                name = cardName;
                checkpoint.Dispose();
            }
            else name = Path.GetFileNameWithoutExtension(path);
            var result = ServeBenchmark.Run(path, name, parse.GetValue(device)!, parse.GetValue(concurrency)!.Split(',').Select(int.Parse).ToArray(),
                parse.GetValue(documents), parse.GetValue(documentTokens), parse.GetValue(promptTokens), parse.GetValue(maxTokens), parse.GetValue(requests), parse.GetValue(trace),
                parse.GetValue(sampled));
            result.Print();
            result.Save(parse.GetValue(output)!);
            return 0;
        });
        return command;
    }

    private static Command CreateSharedTier()
    {
        var tier = new Option<string>("--shared-tier") { Description = "The running server (garnet-server): redis://HOST:PORT", Required = true };
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)", DefaultValueFactory = _ => "qwen2.5-0.5b" };
        var tokens = new Option<int>("--packet-tokens") { Description = "Tokens per packet", DefaultValueFactory = _ => 512 };
        var packets = new Option<int>("--packets") { Description = "Packets loaded per pass", DefaultValueFactory = _ => 16 };
        var passes = new Option<int>("--passes") { Description = "Load passes (shared tier, local store, plain GETs alternating); medians reported", DefaultValueFactory = _ => 5 };
        var concurrency = new Option<string>("--concurrency") { Description = "Concurrency levels of the TTFT runs", DefaultValueFactory = _ => "1,16" };
        var documents = new Option<int>("--documents") { Description = "Packets per request", DefaultValueFactory = _ => 1 };
        var requestsAtOne = new Option<int>("--requests-at-one") { Description = "Requests at concurrency 1 (a level of c > 1 sends c)", DefaultValueFactory = _ => 4 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("shared-tier", "Shared packet tier on Garnet: load vs local store vs rebuild, and TTFT on node B for packets ingested on node A")
        {
            tier, model, shape, tokens, packets, passes, concurrency, documents, requestsAtOne, output,
        };
        command.SetAction(parse =>
        {
            string? path = parse.GetValue(model);
            string name;
            if (path is null)
            {
                var (checkpoint, cardName) = BenchModel.Open(null, parse.GetValue(shape), DType.BF16);
                path = checkpoint.Source;
                name = cardName;
                checkpoint.Dispose();
            }
            else name = Path.GetFileNameWithoutExtension(path);
            var result = SharedTierBenchmark.Run(path, name, parse.GetValue(tier)!, parse.GetValue(tokens), parse.GetValue(packets), parse.GetValue(passes),
                parse.GetValue(concurrency)!.Split(',').Select(int.Parse).ToArray(), parse.GetValue(documents), parse.GetValue(requestsAtOne));
            result.Print();
            result.Save(parse.GetValue(output)!);
            return 0;
        });
        return command;
    }

    private static Command CreateBarrage()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint the daemon serves (default: the shipped kvqa-17m)" };
        var seed = new Option<int>("--seed") { Description = "Seed of the random JSON bodies", DefaultValueFactory = _ => 1 };
        var rounds = new Option<int>("--rounds") { Description = "Times the whole barrage is sent", DefaultValueFactory = _ => 3 };
        var heapLimit = new Option<int>("--heap-limit-mb") { Description = "The daemon's managed-heap hard limit (0: none); a leak would end in OutOfMemory", DefaultValueFactory = _ => 256 };
        var command = new Command("barrage", "Adversarial requests against a kvpacketd process, in rounds: status histogram (no 5xx allowed), RSS per round, same greedy tokens after") { model, seed, rounds, heapLimit };
        command.SetAction(parse =>
        {
            var result = HostileBarrage.Run(parse.GetValue(model) ?? ShippedModel.Directory, parse.GetValue(seed), Math.Max(1, parse.GetValue(rounds)), parse.GetValue(heapLimit));
            Console.WriteLine($"{result.Statuses.Values.Sum()} requests; status histogram (0 = connection ended without a response: slowloris, disconnected streams):");
            foreach (var (status, count) in result.Statuses) Console.WriteLine($"  {status,3}: {count}");
            Console.WriteLine($"daemon RSS before and after each round: {string.Join(" / ", result.Rss.Select(r => $"{r / 1048576.0:F1}"))} MiB; " +
                              $"the same greedy completion afterwards: {(result.SameTokensAfter ? "identical" : "DIFFERENT")}");
            for (int i = 0; i < result.Metrics.Length; i++) Console.WriteLine($"  {(i == 0 ? "before" : $"round {i}"),-8} RSS {result.Rss[i] / 1048576.0,6:F1} MiB; {result.Metrics[i]}");
            foreach (string error in result.ServerErrors) Console.WriteLine($"  5xx: {error}");
            return result.ServerErrors.Count == 0 && result.SameTokensAfter ? 0 : 1;
        });
        return command;
    }

    private delegate BenchResult Run(Transformer model, string name, string weightType, Settings settings, WorkerPool pool);

    private sealed record Settings(int Tokens, int PromptTokens, int Repeats, int Documents, int DocumentTokens);

    private static Command Create(string name, string description, Run run)
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var dtype = new Option<DType>("--dtype") { Description = "Weight type when synthesising: F32, F16, BF16, or a GGUF block format (Q8_0, Q6_K, Q5_K, Q4_K, Q4_0) quantised from BF16", DefaultValueFactory = _ => DType.BF16 };
        var tokens = new Option<int>("-n", "--tokens") { Description = "Decode steps", DefaultValueFactory = _ => 128 };
        var prompt = new Option<int>("--prompt-tokens") { Description = "Prompt length", DefaultValueFactory = _ => name switch { "prefill" => 512, "rag" => 32, _ => 16 } };
        var repeats = new Option<int>("--repeats") { Description = "Runs; the median is reported", DefaultValueFactory = _ => 3 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var documents = new Option<int>("--documents") { Description = "rag: documents per request", DefaultValueFactory = _ => 8 };
        var documentTokens = new Option<int>("--document-tokens") { Description = "rag: tokens per document", DefaultValueFactory = _ => 512 };
        var kvType = CommonOptions.KvType();
        var threads = CommonOptions.Threads();
        var command = new Command(name, description) { model, shape, dtype, tokens, prompt, repeats, output, kvType, threads };
        if (name == "rag") { command.Options.Add(documents); command.Options.Add(documentTokens); }
        command.SetAction(parse =>
        {
            var (checkpoint, modelName) = BenchModel.Open(parse.GetValue(model), parse.GetValue(shape), parse.GetValue(dtype));
            using (checkpoint)
            {
                var settings = new Settings(parse.GetValue(tokens), parse.GetValue(prompt), parse.GetValue(repeats), parse.GetValue(documents), parse.GetValue(documentTokens));
                int maxTokens = name == "rag"
                    ? 3 * settings.Documents * (settings.DocumentTokens + 64) + 4 * settings.PromptTokens
                    : Math.Min(checkpoint.Config.MaxContextLength, settings.PromptTokens + settings.Tokens + 16);
                using var transformer = new Transformer(checkpoint, new TransformerOptions
                {
                    KvType = parse.GetValue(kvType),
                    Threads = parse.GetValue(threads),
                    KvCacheTokens = maxTokens,
                    MaxBatchTokens = Math.Max(16, Math.Min(settings.PromptTokens, 512)),
                });
                using var pool = new WorkerPool(transformer.ThreadCount);
                var result = run(transformer, modelName, checkpoint.Layers[0].Query.Type.ToString(), settings, pool);
                result.Print();
                result.Save(parse.GetValue(output)!);
            }
            return 0;
        });
        return command;
    }

    private static BenchResult Decode(Transformer model, string name, string weightType, Settings settings, WorkerPool pool)
    {
        const int WarmUp = 8;
        if (settings.Tokens <= WarmUp) throw new ArgumentException($"Decode needs more than {WarmUp} tokens.");
        var generator = new Generator(model);
        int[] prompt = RandomPrompt(settings.PromptTokens, model.Config.VocabSize);
        var options = new GenerationOptions { MaxNewTokens = settings.Tokens, StopTokens = [] };
        var rates = new List<double>();
        long allocated = 0;
        generator.Generate(prompt, options); // warm-up run: JIT tier-up and one-time initialisation happen here, not in the figures
        for (int r = 0; r < settings.Repeats; r++)
        {
            int seen = 0;
            long startBytes = 0, startTime = 0;
            generator.Generate(prompt, options, _ =>
            {
                if (++seen == WarmUp) { startBytes = GC.GetTotalAllocatedBytes(precise: true); startTime = System.Diagnostics.Stopwatch.GetTimestamp(); }
                else if (seen == settings.Tokens)
                {
                    double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(startTime).TotalSeconds;
                    allocated = Math.Max(allocated, GC.GetTotalAllocatedBytes(precise: true) - startBytes);
                    rates.Add((seen - WarmUp) / seconds);
                }
            });
        }
        double tokensPerSecond = Statistics.Median(rates);
        double bandwidth = MachinePeaks.ReadBandwidth(pool);
        double bytesPerToken = model.Model.BytesReadPerToken;
        double roofline = bandwidth / bytesPerToken;
        var stages = DecodeProfile(model, generator, prompt, options);
        return new BenchResult("decode", name, weightType, model.Options.KvType.ToString(), model.ThreadCount, new Dictionary<string, double>(stages)
        {
            ["decode_tokens_per_s_median"] = tokensPerSecond,
            ["decode_tokens_measured"] = settings.Tokens - WarmUp,
            ["weight_bytes_per_token"] = bytesPerToken,
            ["measured_read_bandwidth_GB_per_s"] = bandwidth / 1e9,
            ["roofline_tokens_per_s"] = roofline,
            ["fraction_of_roofline"] = tokensPerSecond / roofline,
            ["managed_bytes_allocated_per_token"] = (double)allocated / (settings.Tokens - WarmUp),
        }, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    /// <summary>
    /// One more decode run with the forward pass timed stage by stage (apart from the measured runs: the clock reads
    /// cost a little): milliseconds per token of each stage, and for the projections the GB/s of their weights.
    /// </summary>
    private static Dictionary<string, double> DecodeProfile(Transformer model, Generator generator, int[] prompt, GenerationOptions options)
    {
        var profile = new ForwardProfile();
        generator.Generate(prompt, options with { MaxNewTokens = 1 }); // the prompt's prefill is not part of the profile
        model.Profile = profile;
        int seen = 0;
        generator.Generate(prompt, options, _ => { if (++seen == 1) profile.Reset(); });
        model.Profile = null;
        var m = model.Model;
        long Bytes(Func<LayerWeights, WeightTensor[]> pick) => m.Layers.Sum(l => pick(l).Sum(w => w.ByteCount));
        var weights = new Dictionary<ForwardProfile.Stage, long>
        {
            [ForwardProfile.Stage.QueryKeyValue] = Bytes(l => [l.Query, l.Key, l.Value]),
            [ForwardProfile.Stage.Output] = Bytes(l => [l.Output]),
            [ForwardProfile.Stage.GateUp] = Bytes(l => [l.Gate, l.Up]),
            [ForwardProfile.Stage.Down] = Bytes(l => [l.Down]),
            [ForwardProfile.Stage.Classifier] = m.Classifier.ByteCount,
        };
        var figures = new Dictionary<string, double>();
        double steps = Math.Max(1, profile.Steps);
        foreach (var stage in Enum.GetValues<ForwardProfile.Stage>())
        {
            string key = stage.ToString().ToLowerInvariant();
            figures[$"stage_{key}_ms_per_token"] = profile.Seconds(stage) * 1e3 / steps;
            if (weights.TryGetValue(stage, out long bytes) && profile.Seconds(stage) > 0)
                figures[$"stage_{key}_GB_per_s"] = bytes * steps / profile.Seconds(stage) / 1e9;
        }
        figures["stage_all_ms_per_token"] = profile.TotalSeconds * 1e3 / steps;
        return figures;
    }

    private static BenchResult Prefill(Transformer model, string name, string weightType, Settings settings, WorkerPool pool)
    {
        var c = model.Config;
        var generator = new Generator(model);
        int[] prompt = RandomPrompt(settings.PromptTokens, c.VocabSize);
        var options = new GenerationOptions { MaxNewTokens = 1, StopTokens = [] };
        generator.Generate(prompt[..Math.Min(32, prompt.Length)], options); // warm-up: JIT and page faults
        var seconds = new List<double>();
        for (int r = 0; r < settings.Repeats; r++) seconds.Add(generator.Generate(prompt, options).PrefillSeconds);
        // Where the time goes: one more run with each stage timed (outside the figures above).
        model.TimeStages(true);
        generator.Generate(prompt, options);
        var stages = model.TakeStageTimes();
        model.TimeStages(false);

        var checkpoint = model.Model;
        long p = prompt.Length;
        double matrixFlops = 2.0 * p * checkpoint.Layers.Sum(l => l.Matrices.Sum(m => m.ElementCount));
        double attentionFlops = 4.0 * c.LayerCount * c.QueryDim * (p * (p + 1) / 2);
        double classifierFlops = 2.0 * c.VocabSize * c.HiddenSize * Math.Ceiling(p / (double)model.Options.MaxBatchTokens);
        double flops = matrixFlops + attentionFlops + classifierFlops;
        double time = Statistics.Median(seconds);
        double peak = MachinePeaks.FmaThroughput(pool);
        var figures = new Dictionary<string, double>
        {
            ["prompt_tokens"] = p,
            ["prefill_seconds_median"] = time,
            ["prefill_tokens_per_s"] = p / time,
            ["prefill_GFLOP"] = flops / 1e9,
            ["prefill_GFLOP_per_s"] = flops / time / 1e9,
            ["measured_fma_peak_GFLOP_per_s"] = peak / 1e9,
            ["fraction_of_fma_peak"] = flops / time / peak,
        };
        foreach (var (stage, ms) in stages.OrderByDescending(s => s.Value)) figures[$"stage_ms_{stage}"] = ms;
        return new BenchResult("prefill", name, weightType, model.Options.KvType.ToString(), model.ThreadCount, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    private static BenchResult Rag(Transformer model, string name, string weightType, Settings settings, WorkerPool pool) =>
        RagBenchmark.Run(model, name, weightType, model.Options.KvType.ToString(), model.ThreadCount, settings.Documents, settings.DocumentTokens, settings.PromptTokens, settings.Repeats, epicTokens: 16, adapterTokens: 5);

    private static int[] RandomPrompt(int length, int vocab) => new SeededRandom(11).NextTokens(length, 0, vocab);
}
