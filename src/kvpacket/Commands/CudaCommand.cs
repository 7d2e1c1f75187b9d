using System.CommandLine;
using System.Diagnostics;
using KvPacket.Cli.Bench;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket cuda check|bench|rag|draw</c>: the CUDA backend on this machine's GPU. <c>check</c> compares it with the CPU
/// (logits and greedy tokens, outputs poisoned before every step) with the model card's kernels and with the generic
/// ones; <c>bench</c> times decode and prefill with CUDA events after warm-up against the measured copy bandwidth;
/// <c>draw</c> checks and times token draws on the device.
/// </summary>
internal static class CudaCommand
{
    public static Command Create()
    {
        var command = new Command("cuda", "Check and benchmark the CUDA backend (needs an NVIDIA GPU and the CUDA libraries)");
        command.Subcommands.Add(Check());
        command.Subcommands.Add(BenchCommand());
        command.Subcommands.Add(RagCommand());
        command.Subcommands.Add(DrawCommand());
        foreach (var training in CudaTrainCommand.Create()) command.Subcommands.Add(training);
        return command;
    }

    private static Command Check()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var weights = new Option<DType>("--weights") { Description = WeightsDescription, DefaultValueFactory = _ => DType.F32 };
        var kv = CommonOptions.KvType();
        var steps = new Option<int>("-n", "--steps") { Description = "Greedy steps compared", DefaultValueFactory = _ => 128 };
        var prompt = new Option<int>("--prompt-tokens") { Description = "Prompt length", DefaultValueFactory = _ => 32 };
        var tolerance = new Option<double>("--tolerance") { Description = "Largest logit difference accepted: max-abs with F32 operands and KV (default 1e-3), else relative (default 2e-2)", DefaultValueFactory = _ => -1 };
        var operands = new Option<DType?>("--operands") { Description = "The products' operands beside block-quantised weights: F32 or BF16 (default)" };
        var command = new Command("check", "CUDA vs CPU: logits and greedy tokens, card kernels and generic kernels; a quantised model against its matrices widened to f32 on the CPU")
            { model, shape, weights, kv, steps, prompt, tolerance, operands };
        var stored = (ParseResult parse) => parse.GetValue(weights) is var w && (w.IsBlockQuantised() || w == DType.BF16) ? w : DType.F32;
        command.SetAction(parse => BenchModel.OnGpu(parse.GetValue(model), parse.GetValue(shape), stored(parse), (checkpoint, name, device) =>
            {
                Console.WriteLine($"{device.Name} (sm_{device.Architecture}, driver {device.DriverVersion}), NVRTC {NvrtcVersion()}; model {name}");
                var type = parse.GetValue(operands) ?? OperandType(stored(parse));
                // All-f32 runs must agree to 1e-3 absolute; with bf16 weights or an f16 cache, roundings differ by design: 2e-2 relative.
                bool exact = type == DType.F32 && parse.GetValue(kv) == DType.F32;
                double limit = parse.GetValue(tolerance) is > 0 and var t ? t : exact ? 1e-3 : 2e-2;
                bool ok = true;
                string scratch = Directory.CreateTempSubdirectory("kvpacket-cuda-check-").FullName;
                Core.Model.Checkpoint? reference;
                // Held in memory once loaded, so the file can go at once: nothing is left behind if a check throws.
                try { reference = CudaParity.DequantisedReference(checkpoint, Path.Combine(scratch, "dequantised.gguf")); }
                finally { Directory.Delete(scratch, recursive: true); }
                using var ownedReference = reference;
                if (reference is not null) Console.WriteLine("  CPU reference: the quantised matrices widened to f32 (the values the GPU's quantised products multiply by)");
                foreach (bool specialised in new[] { true, false })
                {
                    var result = CudaParity.Run(checkpoint, device, type, parse.GetValue(kv), parse.GetValue(prompt), parse.GetValue(steps), specialised, reference);
                    double measured = exact ? result.MaxAbsDifference : result.MaxRelativeDifference;
                    bool pass = measured <= limit && result.GreedyAgrees && result.UnwrittenLogits == 0;
                    ok &= pass;
                    Console.WriteLine($"  {result.Kernels,-28} weights {type} KV {parse.GetValue(kv)}: max |Δlogit| {result.MaxAbsDifference:E2}, max relative {result.MaxRelativeDifference:E2}, " +
                                      $"greedy {(result.FirstDivergentStep < 0 ? $"identical for {result.Steps} steps" : $"first differs at step {result.FirstDivergentStep} (CPU logits of the two tokens {result.DivergentMargin:E2} apart{(result.GreedyAgrees ? ": a tie within the measured difference" : "")})")}, unwritten {result.UnwrittenLogits} → {(pass ? "PASS" : "FAIL")} (limit {limit:E0})");
                }
                var (batchAbs, batchRelative) = CudaParity.BatchConsistency(checkpoint, device, type, parse.GetValue(kv), Math.Min(16, parse.GetValue(steps)));
                bool batchOk = (exact ? batchAbs : batchRelative) <= limit;
                ok &= batchOk;
                int divergent = CudaParity.BackendAgreement(checkpoint, device, type, parse.GetValue(kv), Math.Min(32, parse.GetValue(steps)), reference);
                ok &= divergent < 0 || !exact;
                Console.WriteLine($"  IForwardBackend, CPU vs CUDA, 3 sequences together: greedy {(divergent < 0 ? $"identical for {Math.Min(32, parse.GetValue(steps))} steps" : $"differs at step {divergent}")}" +
                                  (exact ? "" : " (mixed precision: reported, not required)"));
                Console.WriteLine($"  batched (3 sequences, ragged prefill + decode) vs alone: max |Δlogit| {batchAbs:E2}, max relative {batchRelative:E2} → {(batchOk ? "PASS" : "FAIL")} (limit {limit:E0})");
                // 20 sequences: the batched decode steps of serving (cuBLAS products, many splits in flight).
                var (manyAbs, manyRelative) = CudaParity.BatchConsistency(checkpoint, device, type, parse.GetValue(kv), Math.Min(8, parse.GetValue(steps)), count: 20);
                bool manyOk = (exact ? manyAbs : manyRelative) <= limit;
                ok &= manyOk;
                Console.WriteLine($"  batched (20 sequences) vs alone: max |Δlogit| {manyAbs:E2}, max relative {manyRelative:E2} → {(manyOk ? "PASS" : "FAIL")} (limit {limit:E0})");
                if (reference is not null && type == DType.BF16)
                {
                    // 9 to 200 tokens: one token tile and several, partial tiles and column splits.
                    double tensorCores = CudaParity.QuantisedTensorCoreAgreement(checkpoint, device, parse.GetValue(kv), 9, 40, 64, 65, 200);
                    bool tensorOk = tensorCores <= limit;
                    ok &= tensorOk;
                    Console.WriteLine($"  quantised products on the tensor cores vs through cuBLAS on dequantised slices (prompts of 9–200 tokens): max relative {tensorCores:E2} → {(tensorOk ? "PASS" : "FAIL")} (limit {limit:E0})");
                }
                // The RAG modes through RagEngine on both backends: packets built on each, placed as shared realigned blocks.
                using var ragBackend = new CudaTransformer(checkpoint, device, type, parse.GetValue(kv), maxTokens: 128, kvTokens: 4096, maxSequences: 16);
                foreach (var rag in RagModeParity.Measure(reference ?? checkpoint, ragBackend, parse.GetValue(kv)))
                {
                    if (rag.Refused is not null)
                    {
                        Console.WriteLine($"  RAG {rag.Label,-16}: not on the GPU ({rag.Refused}); blocks back {rag.BlocksReturned}");
                        ok &= rag.BlocksReturned;
                        continue;
                    }
                    bool ragOk = (exact ? rag.MaxAbsDifference : rag.MaxRelativeDifference) <= limit && (rag.GreedySame || !exact) && rag.BlocksReturned;
                    ok &= ragOk;
                    Console.WriteLine($"  RAG {rag.Label,-16}: query + continuation max |Δlogit| {rag.MaxAbsDifference:E2}, max relative {rag.MaxRelativeDifference:E2}, " +
                                      $"greedy {(rag.GreedySame ? "same" : "differs")}, blocks back {rag.BlocksReturned} → {(ragOk ? "PASS" : "FAIL")} (limit {limit:E0})");
                }
                // Packets built on the GPU, stored, and read back into device blocks by a restarted source: byte for byte —
                // and stored as int8, decoded on the device byte for byte as the host decodes them.
                foreach (var storage in new Store.KvStorage?[] { null, Store.KvStorage.Int8 })
                {
                    string storeDirectory = Path.Combine(Path.GetTempPath(), $"kvpacket-cuda-check-{Environment.ProcessId}");
                    try
                    {
                        using var gpu = new CudaTransformer(checkpoint, device, type, parse.GetValue(kv), maxTokens: 128, kvTokens: 4096);
                        var trip = Store.PacketRoundTrip.Run(gpu, storeDirectory, storage: storage);
                        bool tripOk = trip.DifferentRows == 0 && trip.MaxAbsLogitDifference == 0 && trip.StoreLoads == trip.Packets
                                      && gpu.KvBlocks.FreeBlockCount == gpu.KvBlocks.BlockCount;
                        ok &= tripOk;
                        Console.WriteLine((storage is null
                            ? $"  store round trip: {trip.Packets} packets built on the GPU, stored, loaded into device blocks ({trip.StoreLoads} store loads): "
                            : $"  store round trip, int8 pages: {trip.Packets} packets decoded on the GPU against the host's decode ({trip.StoreLoads} store loads): ") +
                              $"{trip.DifferentRows} K/V rows differ, query logits max |Δ| {trip.MaxAbsLogitDifference:E2} → {(tripOk ? "PASS" : "FAIL")} (identical required)");
                    }
                    finally { if (Directory.Exists(storeDirectory)) Directory.Delete(storeDirectory, recursive: true); }
                }
                // The serving engine (scheduler, KvPacketEngine) on the GPU through the same contract as on the CPU.
                var serving = ServingConsistency.RunAsync(() => BenchModel.Open(parse.GetValue(model), parse.GetValue(shape), stored(parse)).Checkpoint,
                    (m, kvTokens) => new CudaTransformer(m, device, type, parse.GetValue(kv), maxTokens: 64, kvTokens: kvTokens, maxSequences: 32)).GetAwaiter().GetResult();
                // Batched and solo steps take different kernels (cuBLAS products vs one-token products): in f32 the tokens must
                // agree; with bf16 weights or an f16 cache a near-tie may flip, so agreement is reported, not required.
                bool servingOk = serving.Preemptions > 0 && serving.LeakedBlocks == 0 && (serving.Passed || !exact);
                ok &= servingOk;
                Console.WriteLine($"  serving engine on the GPU: {serving.Requests} requests in every mode over shared packets — all at once {serving.ConcurrentSameAsSolo}/{serving.Requests} " +
                                  $"and preempted ({serving.Preemptions} preemptions) {serving.PreemptedSameAsSolo}/{serving.Requests} the same as alone, {serving.LeakedBlocks} blocks leaked" +
                                  $"{(serving.FirstDifference is { } d ? $"; first difference: {d}" : "")} → {(servingOk ? "PASS" : "FAIL")}{(exact ? "" : " (mixed precision: agreement reported)")}");
                return ok ? 0 : 1;
            }));
        return command;
    }

    private static Command DrawCommand()
    {
        var vocab = new Option<int>("--vocab") { Description = "Logits per row (Llama 3's vocabulary by default)", DefaultValueFactory = _ => 128256 };
        var repeats = new Option<int>("--repeats") { Description = "Timed repetitions (after warm-up); medians reported", DefaultValueFactory = _ => 50 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("draw", "Token draws on the GPU (temperature, top-k, top-p) vs the same rule on the host: token for token, as a distribution, and timed")
        {
            vocab, repeats, output,
        };
        command.SetAction(parse =>
        {
            if (!CudaDevice.IsAvailable(out string reason)) { Console.Error.WriteLine($"no GPU: {reason}"); return 2; }
            using var device = CudaDevice.Open();
            return TokenDrawCheck.Run(device, parse.GetValue(vocab), parse.GetValue(repeats), parse.GetValue(output)!);
        });
        return command;
    }

    private static Command RagCommand()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var weights = new Option<DType>("--weights") { Description = WeightsDescription, DefaultValueFactory = _ => DType.BF16 };
        var kv = CommonOptions.KvType();
        var documents = new Option<int>("--documents") { Description = "Documents per request", DefaultValueFactory = _ => 8 };
        var documentTokens = new Option<int>("--document-tokens") { Description = "Tokens per document", DefaultValueFactory = _ => 512 };
        var query = new Option<int>("--prompt-tokens") { Description = "Query tokens", DefaultValueFactory = _ => 32 };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per mode after one warm-up; the median is reported", DefaultValueFactory = _ => 20 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("rag", "TTFT, prefilled tokens and document FLOPs of one RAG request in every mode, on the GPU (the same harness as bench rag)")
        {
            model, shape, weights, kv, documents, documentTokens, query, repeats, output,
        };
        command.SetAction(parse => BenchModel.OnGpu(parse.GetValue(model), parse.GetValue(shape), parse.GetValue(weights), (checkpoint, name, device) =>
            {
                var type = OperandType(parse.GetValue(weights));
                int docs = parse.GetValue(documents), docTokens = parse.GetValue(documentTokens), queryTokens = parse.GetValue(query);
                // Room for the plain and the adapter packets of every document and a request of each mode at once.
                int kvTokens = 3 * docs * (docTokens + 64) + 4 * queryTokens;
                using var gpu = new CudaTransformer(checkpoint, device, type, parse.GetValue(kv), maxTokens: Math.Max(512, queryTokens), kvTokens: kvTokens);
                Console.WriteLine($"{device.Name}; model {name}, weights {parse.GetValue(weights)}, KV {parse.GetValue(kv)}");
                var result = RagBenchmark.Run(gpu, $"{name}-cuda", parse.GetValue(weights).ToString(), parse.GetValue(kv).ToString(), threads: 0, docs, docTokens, queryTokens, parse.GetValue(repeats),
                    epicTokens: 16, adapterTokens: 5);
                result.Print();
                result.Save(parse.GetValue(output)!);
                // Where a KV Packet request's GPU time goes (eager launches, events between stages), against its wall time above.
                var request = RagBenchmark.Request(checkpoint.Config, docs, docTokens, queryTokens);
                using var engine = RagBenchmark.Engine(gpu, epicTokens: 16, adapterTokens: 5);
                PrintStages(gpu, device, "KV Packet request (packets resident)", () => engine.Prefill(request, Engine.Rag.RagMode.KvPacket).Sequence.Dispose(), 10);
                Bench.PacketLoadBenchmark.Run(gpu, request.Documents, rounds: 10);
                            return 0;
            }));
        return command;
    }

    private static Command BenchCommand()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var weights = new Option<DType>("--weights") { Description = WeightsDescription, DefaultValueFactory = _ => DType.BF16 };
        var context = new Option<int>("--context") { Description = "Tokens in the cache when decode is timed", DefaultValueFactory = _ => 512 };
        var prefill = new Option<int>("--prefill-tokens") { Description = "Prompt length for the prefill timing", DefaultValueFactory = _ => 4096 };
        var repeats = new Option<int>("--repeats") { Description = "Timed repetitions (after warm-up); medians reported", DefaultValueFactory = _ => 30 };
        var batchSize = new Option<int>("--batch") { Description = "Sequences decoded together for the batch figure", DefaultValueFactory = _ => 32 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var command = new Command("bench", "Decode step time (batch 1 and batch N) vs the copy-bandwidth roofline, and prefill tokens/s, with CUDA events")
        {
            model, shape, weights, context, prefill, repeats, batchSize, output,
        };
        command.SetAction(parse => BenchModel.OnGpu(parse.GetValue(model), parse.GetValue(shape), parse.GetValue(weights), (checkpoint, name, device) =>
            {
                var type = OperandType(parse.GetValue(weights));
                var figures = new Dictionary<string, double>();
                int repeat = parse.GetValue(repeats), promptLength = parse.GetValue(prefill), decodeContext = parse.GetValue(context);
                figures["copy_GB_per_s"] = CopyBandwidth(device, repeat);
                foreach (bool specialised in new[] { true, false })
                {
                    string tag = specialised ? "card" : "generic";
                    int batch = parse.GetValue(batchSize);
                    int decodeRoom = decodeContext + 24 * repeat + 64;   // the context, and the tokens the timed steps append to it
                    using var gpu = new CudaTransformer(checkpoint, device, type, DType.F16, maxTokens: Math.Min(Math.Max(promptLength, decodeContext), 4096),
                        kvTokens: Math.Max(promptLength + 64, (batch + 1) * decodeRoom), specialised, maxSequences: Math.Max(batch, 1), maxContext: Math.Max(promptLength, decodeRoom) + 64);
                    if (specialised) figures["nvrtc_compile_s"] = gpu.CompileSeconds;
                    var random = new Core.Numerics.SeededRandom(5);
                    int[] tokens = random.NextTokens(Math.Max(promptLength, decodeContext), 0, checkpoint.Config.VocabSize), prompt = tokens[..promptLength];
                    // Prefill: warm up once, then time whole prefills of the prompt.
                    gpu.Prefill(prompt);
                    var prefillMs = device.Time(() => { gpu.Reset(); gpu.Prefill(prompt); }, Math.Max(3, repeat / 5));
                    figures[$"prefill_{promptLength}_tokens_per_s_{tag}"] = promptLength / (Statistics.Median(prefillMs) / 1e3);
                    if (specialised) PrintStages(gpu, device, $"prefill of {promptLength} tokens", () => { gpu.Reset(); gpu.Prefill(prompt); }, 3);
                    if (specialised)
                    {
                        gpu.UseTensorCores = false;
                        var scalarMs = device.Time(() => { gpu.Reset(); gpu.Prefill(prompt); }, Math.Max(3, repeat / 5));
                        gpu.UseTensorCores = true;
                        figures[$"prefill_{promptLength}_tokens_per_s_{tag}_without_tensor_cores"] = promptLength / (Statistics.Median(scalarMs) / 1e3);
                    }
                    // Decode: a context of decodeContext tokens, then one-token steps.
                    gpu.Reset();
                    gpu.Prefill(tokens.AsSpan(0, decodeContext));
                    for (int w = 0; w < 5; w++) gpu.Step([7]);
                    var stepMs = device.Time(() => gpu.Step([7]), repeat);
                    double step = Statistics.Median(stepMs) / 1e3;
                    // Bytes a decode step must read: the weights as held on the GPU, and each sequence's f16 K and V so far.
                    double weightBytes = gpu.WeightBytesPerToken;
                    double kvBytesPerSequence = 2.0 * checkpoint.Config.LayerCount * checkpoint.Config.KvDim * 2 * (decodeContext + 5);
                    double bytes = weightBytes + kvBytesPerSequence;
                    figures[$"decode_step_ms_{tag}"] = step * 1e3;
                    figures[$"decode_tokens_per_s_{tag}"] = 1 / step;
                    figures[$"decode_fraction_of_copy_roofline_{tag}"] = bytes / step / 1e9 / figures["copy_GB_per_s"];
                    figures["decode_bytes_per_token"] = bytes;
                    gpu.UseGraphs = false;
                    var eagerMs = device.Time(() => gpu.Step([7]), repeat);
                    gpu.UseGraphs = true;
                    figures[$"decode_step_ms_{tag}_without_graphs"] = Statistics.Median(eagerMs);
                    gpu.UseDependentLaunches = false;
                    var serialMs = device.Time(() => gpu.Step([7]), repeat);
                    gpu.UseDependentLaunches = true;
                    figures[$"decode_step_ms_{tag}_without_dependent_launches"] = Statistics.Median(serialMs);
                    if (specialised) PrintStages(gpu, device, $"decode step (eager, {decodeContext}-token context)", () => gpu.Step([7]), repeat);
                    if (!specialised || batch <= 1) continue;

                    // Batch decode: `batch` sequences of decodeContext tokens, one token each per step.
                    gpu.Reset();
                    var sequences = new int[batch];
                    var ones = Enumerable.Repeat(1, batch).ToArray();
                    var next = Enumerable.Repeat(7, batch).ToArray();
                    for (int s = 0; s < batch; s++)
                    {
                        sequences[s] = gpu.CreateSequence();
                        for (int offset = 0; offset < decodeContext; offset += 4096)
                        {
                            int length = Math.Min(4096, decodeContext - offset);
                            gpu.Step([sequences[s]], [length], prompt.AsSpan(offset, length));
                        }
                    }
                    for (int w = 0; w < 5; w++) gpu.Step(sequences, ones, next);
                    var batchMs = device.Time(() => gpu.Step(sequences, ones, next), repeat);
                    double batchStep = Statistics.Median(batchMs) / 1e3;
                    double batchBytes = weightBytes + batch * kvBytesPerSequence;
                    figures[$"decode_batch{batch}_step_ms"] = batchStep * 1e3;
                    figures[$"decode_batch{batch}_tokens_per_s"] = batch / batchStep;
                    figures[$"decode_batch{batch}_fraction_of_copy_roofline"] = batchBytes / batchStep / 1e9 / figures["copy_GB_per_s"];
                    PrintStages(gpu, device, $"decode step of {batch} sequences (eager)", () => gpu.Step(sequences, ones, next), repeat);
                    // The split count's target, swept at both batch sizes (the default is what the figures above use).
                    int defaultBlocks = gpu.DecodeAttentionBlocks;
                    foreach (int blocks in new[] { 128, 256, 512, 1024, 4096, 8192 })
                    {
                        gpu.DecodeAttentionBlocks = blocks;
                        figures[$"decode_batch{batch}_step_ms_attention_blocks_{blocks}"] = Statistics.Median(device.Time(() => gpu.Step(sequences, ones, next), repeat / 2));
                        figures[$"decode_step_ms_attention_blocks_{blocks}"] = Statistics.Median(device.Time(() => gpu.Step([sequences[0]], [1], [7]), repeat / 2));
                    }
                    gpu.DecodeAttentionBlocks = defaultBlocks;
                    if (parse.GetValue(weights).IsBlockQuantised())
                    {
                        // The warps in flight of the products over quantised blocks, swept at batch 1 (the default is what the figures above use).
                        int defaultWarps = gpu.QuantisedWarps;
                        foreach (int warps in new[] { 2048, 4096, 16384, 32768 })
                        {
                            gpu.QuantisedWarps = warps;
                            figures[$"decode_step_ms_quantised_warps_{warps}"] = Statistics.Median(device.Time(() => gpu.Step([sequences[0]], [1], [7]), repeat / 2));
                        }
                        gpu.QuantisedWarps = defaultWarps;
                        // Steps of more than 8 tokens: the tensor cores from the decoded blocks against cuBLAS on dequantised slices, in turn.
                        foreach (var (label, ms) in EachQuantisedPath(gpu, () => Statistics.Median(device.Time(() => gpu.Step(sequences, ones, next), repeat / 2))))
                            figures[$"decode_batch{batch}_step_ms_{label}"] = ms;
                    }
                    foreach (int s in sequences) gpu.ReleaseSequence(s);
                    if (parse.GetValue(weights).IsBlockQuantised())
                    {
                        // Prefill lengths where the tensor-core products might give way to cuBLAS on dequantised slices, in turn.
                        foreach (int length in new[] { 64, 128, 256, 512, 1024 })
                        {
                            if (length > promptLength) break;
                            int[] part = prompt[..length];
                            foreach (var (label, ms) in EachQuantisedPath(gpu, () => Statistics.Median(device.Time(() => { gpu.Reset(); gpu.Prefill(part); }, Math.Max(3, repeat / 5)))))
                                figures[$"prefill_{length}_tokens_per_s_{label}"] = length / (ms / 1e3);
                        }
                    }
                }
                var result = new BenchResult("cuda", name, parse.GetValue(weights).ToString(), "F16", 1, figures, $"{device.Name} sm_{device.Architecture}", DateTimeOffset.UtcNow);
                result.Print();
                result.Save(parse.GetValue(output)!);
                return 0;
            }));
        return command;
    }

    /// <summary>
    /// <paramref name="measure"/> with steps of more than 8 tokens on the tensor cores ("tensor_cores"), then through cuBLAS on
    /// dequantised slices ("dequantised_cublas"); the model's own choice restored after.
    /// </summary>
    private static (string Label, double Value)[] EachQuantisedPath(CudaTransformer gpu, Func<double> measure)
    {
        int chosen = gpu.QuantisedTensorCoreTokens;
        try
        {
            gpu.QuantisedTensorCoreTokens = int.MaxValue;
            double tensorCores = measure();
            gpu.QuantisedTensorCoreTokens = 0;
            return [("tensor_cores", tensorCores), ("dequantised_cublas", measure())];
        }
        finally { gpu.QuantisedTensorCoreTokens = chosen; }
    }

    private const string WeightsDescription = "Weights on the GPU: F32 or BF16, or a block type (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) a synthesised model is quantised to; " +
                                              "block-quantised matrices stay as stored, with bf16 operands";

    /// <summary>The products' operand type (and the float matrices') for <paramref name="weights"/>: bf16 beside block-quantised matrices.</summary>
    private static DType OperandType(DType weights) => weights.IsBlockQuantised() ? DType.BF16 : weights;

    /// <summary>GPU time per stage of <paramref name="work"/> (eager, events between stages), averaged over <paramref name="repeats"/> runs.</summary>
    private static void PrintStages(CudaTransformer gpu, CudaDevice device, string what, Action work, int repeats)
    {
        using var timeline = new CudaTimeline(device);
        gpu.Timeline = timeline;
        try
        {
            work(); // warm-up
            timeline.Totals();
            for (int r = 0; r < repeats; r++) work();
            var totals = timeline.Totals();
            double sum = totals.Values.Sum();
            Console.WriteLine($"  stages of one {what}, µs (share):");
            foreach (var (label, ms) in totals.OrderByDescending(t => t.Value))
                Console.WriteLine($"    {label,-28} {ms * 1e3 / repeats,10:F1} ({ms / sum,6:P1})");
        }
        finally { gpu.Timeline = null; }
    }

    /// <summary>Device-to-device copy GB/s (bytes read plus written), the decode roofline's bandwidth.</summary>
    internal static double CopyBandwidth(CudaDevice device, int repeats)
    {
        const long bytes = 1L << 30;
        using var source = device.Allocate(bytes);
        using var destination = device.Allocate(bytes);
        device.Fill(source, 0x3f800000);
        device.Copy(source, destination, bytes);
        var ms = device.Time(() => device.Copy(source, destination, bytes), repeats);
        return 2.0 * bytes / (Statistics.Median(ms) / 1e3) / 1e9; // bytes read plus bytes written
    }

    private static string NvrtcVersion()
    {
        try { return Compute.Cuda.CudaDevice.NvrtcVersion; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return "not found"; }
    }
}
