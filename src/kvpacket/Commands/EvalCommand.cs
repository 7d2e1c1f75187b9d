using System.CommandLine;
using System.Text.Json;
using System.Diagnostics;
using KvPacket.Cli.Training;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Store;
using KvPacket.Training;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket eval</c>: every mode against full recompute on the same held-out requests. With no text corpus here,
/// documents are by default stories the model itself samples from fixed seeds, the query is the start of a further
/// story, and the continuation is what full context predicts greedily. <c>--train-adapters</c> first distils every
/// adapter variant on a disjoint training split, so one command reproduces the quality table.
/// </summary>
internal static class EvalCommand
{
    /// <summary>The adapters <c>--train-adapters</c> trains: KV Packet header/trailer sizes and KVLink link counts.</summary>
    private static readonly (RagMode Mode, int Header, int Trailer, int Links)[] Variants =
        [(RagMode.KvPacket, 1, 1, 0), (RagMode.KvPacket, 4, 4, 0), (RagMode.KvPacket, 16, 16, 0), (RagMode.KvPacket, 1, 0, 0), (RagMode.KvPacket, 4, 0, 0), (RagMode.KvLink, 0, 0, 1), (RagMode.KvLink, 0, 0, 5)];

    public static Command Create()
    {
        var model = CommonOptions.Model();
        var shapeOptions = new RequestShapeOptions();
        var requests = new Option<int>("--requests") { Description = "Held-out requests", DefaultValueFactory = _ => 16 };
        var continuation = new Option<int>("--continuation") { Description = "Continuation tokens scored per request", DefaultValueFactory = _ => 16 };
        var output = new Option<string>("--out") { Description = "JSON result path", DefaultValueFactory = _ => Path.Combine("benchmarks", "results", "eval.json") };
        var train = new Option<bool>("--train-adapters") { Description = "First distil the adapters (KV Packet H/T 1/1, 4/4, 16/16, 1/0, 4/0; KVLink L 1, 5) on a training split" };
        var trainExamples = new Option<int>("--train-examples") { Description = "Training requests", DefaultValueFactory = _ => 128 };
        var trainSteps = new Option<int>("--train-steps") { Description = "Most distillation steps per adapter (early stopping may end sooner)", DefaultValueFactory = _ => 200 };
        var learningRate = new Option<double>("--learning-rate") { Description = "Peak learning rate", DefaultValueFactory = _ => 0.03 };
        var probes = new Option<bool>("--probes") { Description = "Also print KL of fixed layouts (no documents, one, separators, a position gap): what adapters can and cannot win back" };
        var task = new Option<string>("--task") { Description = "kl (every mode against full recompute) or qa (answer a QA benchmark split)", DefaultValueFactory = _ => "kl" };
        task.AcceptOnlyFromAmong("kl", "qa");
        var split = new Option<string?>("--split") { Description = "--task qa: the JSONL split to answer (kvpacket corpus)" };
        var limit = new Option<int>("--limit") { Description = "--task qa: questions answered (0: all)", DefaultValueFactory = _ => 0 };
        var store = new Option<string?>("--store") { Description = "--task qa: packet store holding the adapter for kvpacket / kvlink modes" };
        var adapterName = new Option<string?>("--adapter") { Description = "--task qa: adapter files FILE[,FILE] (.safetensors: a KV Packet and a KVLink one), or with --store a stored adapter, NAME or NAME@VERSION" };
        var modes = new Option<string>("--modes") { Description = "--task qa: comma-separated modes (full, closed-book, naive, epic, cacheblend, kvpacket, kvlink)", DefaultValueFactory = _ => "full,closed-book,naive" };
        var plot = new Option<string?>("--plot") { Description = "--task qa: also draw F1 against time to first token per mode (SVG)" };
        var trace = new Option<string?>("--trace") { Description = "--task qa: write a Chrome / Perfetto trace of every answer's prefill and decode, a row per mode" };
        var positions = new Option<string>("--packet-positions")
        {
            Description = "--task qa: realigned (packets at the positions they are placed at) or local (every document's keys start after the prefix: no re-positioning)",
            DefaultValueFactory = _ => "realigned",
        };
        positions.AcceptOnlyFromAmong("realigned", "local");
        var int8Pages = new Option<bool>("--int8-pages")
        {
            Description = "--task qa: packets built, stored as int8 pages in a temporary store and read back (what int8 storage costs in answers) instead of kept as built",
        };
        var rescore = new Option<string?>("--rescore")
        {
            Description = "--task qa: print a stored result's tables again from its answers (scores and the paired comparison with full recompute), answering nothing (with --plot, drawing its chart again); needs no --model",
        };
        model.Required = false;
        var device = DeviceOption.Create();
        var command = new Command("eval", "Compare every RAG mode with full recompute (KL, top-1 agreement, TTFT, document FLOPs, KV bytes), or answer a QA split (EM, F1, accuracy)")
        {
            model, requests, continuation, output, train, trainExamples, trainSteps, learningRate, probes, task, split, limit, modes, store, adapterName, plot, trace, positions, int8Pages,
            device, rescore,
        };
        shapeOptions.AddTo(command);
        command.SetAction(parse =>
        {
            if (parse.GetValue(task) == "qa" && parse.GetValue(rescore) is { } stored) return Rescore(stored, parse.GetValue(plot));
            if (parse.GetValue(model) is null) throw new ArgumentException("--model is required (a checkpoint to evaluate)");
            if (parse.GetValue(task) == "qa")
                return QaTask(parse.GetValue(model)!, parse.GetValue(split) ?? throw new ArgumentException("--task qa needs --split FILE.jsonl"),
                    parse.GetValue(limit), parse.GetValue(modes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), parse.GetValue(output)!,
                    parse.GetValue(store), parse.GetValue(adapterName), parse.GetValue(plot), parse.GetValue(trace), parse.GetValue(positions) == "realigned", parse.GetValue(int8Pages),
                    parse.GetValue(device)!);
            string modelPath = parse.GetValue(model)!;
            using var checkpoint = CheckpointLoader.Load(modelPath);
            var shape = shapeOptions.Shape(parse, parse.GetValue(continuation));
            int count = parse.GetValue(requests), tokens = shape.GreedyTokens;
            bool trainAdapters = parse.GetValue(train);
            using var transformer = new Transformer(checkpoint, new TransformerOptions
            {
                KvType = DType.F32, MaxBatchTokens = 256,
                KvCacheTokens = 4 * (shape.Documents + 2) * (shape.DocumentTokens + 64) * count,
            });
            var (trainRequests, set) = DistillationSets.Requests(parse.GetValue(shapeOptions.Docs)!, modelPath, transformer, shape, trainAdapters ? parse.GetValue(trainExamples) : 0, count);

            // Each variant's adapter: distilled on the training split (early stopping on a split of it, never on the
            // evaluation requests), or its untrained initial value.
            var trainedOn = trainAdapters ? DistillationSets.Examples(transformer, trainRequests, shape) : [];
            int stopping = Math.Max(1, trainedOn.Length / 8);
            var adapters = new List<(RagMode Mode, Adapter Adapter, string Label, DistillationRun? Run)>();
            foreach (var (mode, header, trailer, links) in Variants)
            {
                string label = mode == RagMode.KvLink ? $"L={links}" : $"H/T={header}/{trailer}";
                int steps = parse.GetValue(trainSteps);
                var distillation = new AdapterDistillation(checkpoint, new DistillationOptions
                {
                    Mode = mode, Header = header, Trailer = trailer, Links = links, Steps = steps, LearningRate = parse.GetValue(learningRate), Name = $"{mode} {label}".ToLowerInvariant(),
                });
                if (!trainAdapters) { adapters.Add((mode, distillation.Initial(), label + " untrained", null)); continue; }
                var run = TrainingDisplay.Run($"{mode.ToString().ToLowerInvariant()} {label}", distillation, trainedOn[stopping..], trainedOn[..stopping], steps);
                adapters.Add((mode, run.Adapter, label + " trained", run));
            }

            var scores = new List<ModeScore>();
            using (var engine = new RagEngine(transformer) { EpicRecomputeTokens = 8 })
                scores.AddRange(ModeEvaluation.Run(transformer, engine, set, [RagMode.Full, RagMode.Naive, RagMode.Epic, RagMode.CacheBlend], tokens));
            foreach (var (mode, adapter, label, _) in adapters)
                using (var engine = new RagEngine(transformer) { Adapter = adapter })
                    scores.AddRange(ModeEvaluation.Run(transformer, engine, set, [mode], tokens, label));

            // KV compression: the packet modes again (the 4/4 and L=5 adapters), with int8 pages read back from a store, and token-pruned to half.
            var packetAdapter = adapters.First(a => a.Label.StartsWith("H/T=4/4", StringComparison.Ordinal)).Adapter;
            var linkAdapter = adapters.First(a => a.Label.StartsWith("L=5", StringComparison.Ordinal)).Adapter;
            var compressed = packetAdapter with { Links = linkAdapter.Links };
            RagMode[] packetModes = [RagMode.Naive, RagMode.KvPacket, RagMode.KvLink];
            string storePath = Path.Combine(Path.GetTempPath(), $"kvpacket-eval-{Environment.ProcessId}");
            try
            {
                using var store = PacketStore.Open(storePath);
                using var int8 = new StoredPackets(transformer, store, KvStorage.Int8);
                using (var engine = new RagEngine(transformer, int8) { Adapter = compressed })
                    scores.AddRange(ModeEvaluation.Run(transformer, engine, set, packetModes, tokens, "int8 pages"));
            }
            finally { if (Directory.Exists(storePath)) Directory.Delete(storePath, recursive: true); }
            using (var pruned = new BuiltPackets(transformer, keep: 0.5))
            using (var engine = new RagEngine(transformer, pruned) { Adapter = compressed })
                scores.AddRange(ModeEvaluation.Run(transformer, engine, set, packetModes, tokens, "pruned to 50%"));

            Console.WriteLine($"{set.Length} held-out requests × {shape.Documents} documents × {shape.DocumentTokens} tokens, {shape.QueryTokens}-token query, " +
                              $"{tokens} continuation tokens scored; adapters {(trainAdapters ? $"trained on {trainedOn.Length} requests" : "untrained")}");
            ModeTable.Print(scores);
            var probed = parse.GetValue(probes) ? LayoutProbe.Run(checkpoint, DistillationSets.Examples(transformer, set, shape)) : [];
            if (probed.Count > 0)
            {
                Console.WriteLine($"{Environment.NewLine}{"layout (no adapters), same held-out requests",-50} {"KL(full‖layout)",16}");
                foreach (var probe in probed) Console.WriteLine($"{probe.Layout,-50} {probe.MeanKl,16:F4}");
            }
            string path = parse.GetValue(output)!;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            File.WriteAllText(path, JsonSerializer.Serialize(new
            {
                model = Path.GetFileName(modelPath), requests = set.Length, shape.Documents, document_tokens = shape.DocumentTokens, query_tokens = shape.QueryTokens,
                continuation_tokens = tokens,
                training = adapters.Where(a => a.Run is not null).Select(a => new
                {
                    adapter = a.Label, mode = a.Mode.ToString(), initial_held_out_kl = a.Run!.InitialHeldOutKl, best_held_out_kl = a.Run.BestHeldOutKl, best_step = a.Run.BestStep,
                    steps_run = a.Run.StepsRun, stopped_early = a.Run.StoppedEarly, examples_per_second = a.Run.ExamplesPerSecond, rows_per_second = a.Run.RowsPerSecond,
                }),
                peak_working_set_bytes = Process.GetCurrentProcess().PeakWorkingSet64,
                scores = scores.Select(ModeTable.ToJson),
                layout_probes = probed.Select(p => new { layout = p.Layout, kl = p.MeanKl }),
            }, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        });
        return command;
    }

    /// <summary><c>--task qa</c>: answers the split's questions in every mode and prints EM / F1 / accuracy per question type.</summary>
    private static int QaTask(string modelPath, string splitPath, int limit, string[] modes, string output, string? storePath, string? adapterName, string? plot, string? tracePath,
        bool realign, bool int8Pages, string device)
    {
        using var checkpoint = CheckpointLoader.Load(modelPath);
        Adapter? adapter = null;
        if (adapterName is not null)
        {
            var fingerprint = Core.Model.ModelFingerprint.Of(checkpoint);
            if (storePath is null)
                adapter = AdapterFile.ReadCombined(adapterName.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), fingerprint, checkpoint.Config.HiddenSize);
            else
            {
                using var packets = PacketStore.Open(storePath, new PacketStoreOptions { ReadOnly = true });
                adapter = packets.FindAdapter(adapterName, fingerprint)
                    ?? throw new ArgumentException($"--adapter: {storePath} has no adapter '{adapterName}' for this model");
            }
        }
        var tokenizer = Core.Tokenization.TokenizerLoader.TryLoadNextTo(modelPath)
            ?? throw new InvalidOperationException($"{modelPath}: no tokenizer.json next to the model");
        var examples = QaBenchmark.Read(splitPath).Take(limit > 0 ? limit : int.MaxValue).ToList();
        using var backend = DeviceOption.Open(checkpoint, device, kvTokens: 8192, out string on);
        var trace = tracePath is null ? null : new Core.Diagnostics.TraceRecorder(trackNames: modes);
        // Int8 pages: every packet is built, stored as int8 and served as read back (StoredPackets' rule), from a store
        // that lives as long as the run.
        string? scratch = int8Pages ? Directory.CreateTempSubdirectory("kvpacket-eval-int8-").FullName : null;
        try
        {
            using var int8Store = scratch is null ? null : PacketStore.Open(scratch);
            using var int8Source = int8Store is null ? null : new StoredPackets(backend, int8Store, KvStorage.Int8);
            var evaluation = new QaEvaluation(backend, tokenizer, adapter, int8Source) { Trace = trace, TraceModes = modes, RealignPackets = realign };
            var clock = Stopwatch.StartNew();
            var (scores, answers) = evaluation.Run(examples, modes, done =>
            {
                if (done % 50 == 0) Console.Error.WriteLine($"{done}/{examples.Count} questions, {clock.Elapsed.TotalSeconds:F0} s");
            });
            Console.WriteLine($"{Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath))} on {Path.GetFileName(splitPath)}: {examples.Count} questions " +
                              $"({on}{(realign ? "" : "; packets at their local positions")}{(int8Pages ? "; packets as int8 pages" : "")})");
            var paired = PrintQa(scores, answers);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
            File.WriteAllText(output, JsonSerializer.Serialize(new
            {
                model = modelPath, split = splitPath, device = on, packet_positions = realign ? "realigned" : "local", packet_pages = int8Pages ? "int8" : "as built",
                scores, paired, answers,
            }, new JsonSerializerOptions { WriteIndented = true }));
            if (plot is not null) PlotCommand.QaChart(scores, plot);
            trace?.WriteChromeTrace(tracePath!);
            return 0;
        }
        finally
        {
            if (scratch is not null) Directory.Delete(scratch, recursive: true);
        }
    }

    // The scores per mode and type, each mode paired with full recompute on the same questions, and the first answers.
    private static IReadOnlyList<PairedComparison> PrintQa(IReadOnlyList<QaScore> scores, IReadOnlyList<QaAnswer> answers)
    {
        Console.WriteLine($"{"mode",-12} {"type",-11} {"n",5} {"EM",7} {"F1",7} {"acc",7} {"TTFT ms",8} {"doc MFLOP",10}");
        foreach (var s in scores)
            Console.WriteLine($"{s.Mode,-12} {s.Type,-11} {s.Questions,5} {s.ExactMatch,7:F3} {s.F1,7:F3} {s.Accuracy,7:F3} {s.MeanTtftSeconds * 1e3,8:F2} {s.MeanDocumentFlops / 1e6,10:F1}");
        var paired = PairedComparison.Of(answers);
        if (paired.Count > 0)
        {
            Console.WriteLine($"{"paired with full",-28} {"only it wrong",13} {"only full wrong",15} {"McNemar p",10}");
            foreach (var p in paired)
                Console.WriteLine($"{p.Mode,-12} {p.Type,-15} {p.OnlyModeWrong,13} {p.OnlyReferenceWrong,15} {p.PValue,10:F3}");
        }
        string? first = answers.Count > 0 ? answers[0].Mode : null;
        foreach (var a in answers.Where(a => a.Mode == first).Take(6))
            Console.WriteLine($"  {a.Question} gold '{a.Gold}', {a.Mode} '{a.Generated}'");
        return paired;
    }

    private static int Rescore(string resultPath, string? plot)
    {
        var answers = QaResultFile.Read<QaAnswer>(resultPath, "answers");
        var modes = answers.Select(a => a.Mode).Distinct().ToList();
        Console.WriteLine($"{resultPath}: {answers.Length / Math.Max(1, modes.Count)} questions × {modes.Count} modes, re-scored");
        var scores = QaEvaluation.Score(answers, modes);
        PrintQa(scores, answers);
        if (plot is not null) PlotCommand.QaChart(scores, plot);
        return 0;
    }
}
