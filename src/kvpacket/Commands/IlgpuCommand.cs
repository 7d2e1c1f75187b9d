using System.CommandLine;
using System.Diagnostics;
using KvPacket.Cli.Bench;
using KvPacket.Compute.Cuda;
using KvPacket.Compute.Ilgpu;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Memory;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Ilgpu;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket ilgpu check</c>: the ILGPU backend on ILGPU's CUDA accelerator (or its CPU one) against the SIMD CPU
/// backend — prompt logits and greedy continuations, every RAG mode, the serving engine alone, together and preempted;
/// <c>kvpacket ilgpu bench</c>: the two GPU backends' decode and prefill at a model's shape, with CUDA events, against
/// the copy roofline, and per stage.
/// </summary>
internal static class IlgpuCommand
{
    public static Command Create()
    {
        var command = new Command("ilgpu", "The ILGPU backend (the forward kernels written once in C#)");
        command.Subcommands.Add(Check());
        command.Subcommands.Add(Bench());
        return command;
    }

    private static Command Check()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var accelerator = new Option<string>("--accelerator") { Description = "cuda (ILGPU's CUDA accelerator, when present) or cpu (its CPU accelerator)", DefaultValueFactory = _ => "cuda" };
        accelerator.AcceptOnlyFromAmong("cuda", "cpu");
        var steps = new Option<int>("-n", "--steps") { Description = "Greedy steps compared", DefaultValueFactory = _ => 16 };
        var command = new Command("check", "ILGPU vs the CPU backend: logits, greedy tokens, RAG modes, serving")
        {
            model, shape, accelerator, steps,
        };
        command.SetAction(parse =>
        {
            var (checkpoint, name) = BenchModel.Open(parse.GetValue(model), parse.GetValue(shape), DType.F32);
            using var owned = checkpoint;
            using var device = IlgpuDevice.Open(preferCuda: parse.GetValue(accelerator) == "cuda");
            Console.WriteLine($"{device.Name}; model {name}");
            var c = checkpoint.Config;
            int n = parse.GetValue(steps);
            bool ok = true;

            // f32 weights and KV on both sides, summed in different orders: the repository's f32 parity limit (issue 4's 1e-3).
            const double Limit = 1e-3;
            using (var cpu = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096, MaxBatchTokens = 128 }))
            using (var ilgpu = new IlgpuTransformer(checkpoint, device.Accelerator, maxTokens: 128, kvTokens: 4096, maxSequences: 16))
            {
                var random = new Core.Numerics.SeededRandom(77);
                int[][] prompts = [.. Enumerable.Range(0, 3).Select(i => (int[])[c.BosTokenId ?? 1, .. random.NextTokens(7 + 11 * i, 3, c.VocabSize)])];
                int vocab = c.VocabSize;
                var expected = new float[prompts[2].Length * vocab];
                var actual = new float[expected.Length];
                using (var s = new BackendSequence(cpu, ((IForwardBackend)cpu).CreateSequence())) s.Prefill(prompts[2], expected, LogitsFor.AllTokens);
                using (var s = new BackendSequence(ilgpu, ilgpu.CreateSequence())) s.Prefill(prompts[2], actual, LogitsFor.AllTokens);
                double worst = 0;
                for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
                var cpuTokens = GreedyDecoding.Run(cpu, prompts, n, out int[] cpuIds);
                var ilgpuTokens = GreedyDecoding.Run(ilgpu, prompts, n, out int[] ilgpuIds);
                foreach (int id in cpuIds) ((IForwardBackend)cpu).ReleaseSequence(id);
                foreach (int id in ilgpuIds) ilgpu.ReleaseSequence(id);
                bool same = cpuTokens.Zip(ilgpuTokens).All(pair => pair.First.SequenceEqual(pair.Second));
                bool pass = worst <= Limit && same;
                ok &= pass;
                Console.WriteLine($"  prompt logits ({prompts[2].Length} rows): max |Δlogit| {worst:E2}; 3 prompts batched, {n} greedy steps: {(same ? "identical" : "differ")} → {(pass ? "PASS" : "FAIL")} (limit {Limit:E0})");
                foreach (var rag in RagModeParity.Measure(checkpoint, ilgpu, DType.F32))
                {
                    bool ragOk = rag.BlocksReturned && (rag.Refused is not null ? rag.Mode == RagMode.CacheBlend : rag.MaxAbsDifference <= Limit && rag.GreedySame);
                    ok &= ragOk;
                    Console.WriteLine(rag.Refused is not null
                        ? $"  RAG {rag.Label,-16}: refused ({rag.Refused}); blocks back {rag.BlocksReturned} → {(ragOk ? "PASS" : "FAIL")}"
                        : $"  RAG {rag.Label,-16}: max |Δlogit| {rag.MaxAbsDifference:E2}, relative {rag.MaxRelativeDifference:E2}, greedy {(rag.GreedySame ? "same" : "differs")}, blocks back {rag.BlocksReturned} → {(ragOk ? "PASS" : "FAIL")}");
                }
            }
            var serving = ServingConsistency.RunAsync(() => BenchModel.Open(parse.GetValue(model), parse.GetValue(shape), DType.F32).Checkpoint,
                (m, kvTokens) => new IlgpuTransformer(m, device.Accelerator, maxTokens: 64, kvTokens: kvTokens, maxSequences: 32)).GetAwaiter().GetResult();
            ok &= serving.Passed;
            Console.WriteLine($"  serving engine: {serving.Requests} requests, together {serving.ConcurrentSameAsSolo}/{serving.Requests}, preempted ({serving.Preemptions}) " +
                              $"{serving.PreemptedSameAsSolo}/{serving.Requests} the same as alone, {serving.LeakedBlocks} blocks leaked → {(serving.Passed ? "PASS" : "FAIL")}");

            return ok ? 0 : 1;
        });
        return command;
    }

    private static Command Bench()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)", DefaultValueFactory = _ => "llama-3.2-1b" };
        var context = new Option<int>("--context") { Description = "Tokens in the cache when decode is timed", DefaultValueFactory = _ => 512 };
        var prefill = new Option<int>("--prefill-tokens") { Description = "Prompt length for the prefill timing", DefaultValueFactory = _ => 512 };
        var repeats = new Option<int>("--repeats") { Description = "Timed decode steps (after warm-up); medians reported", DefaultValueFactory = _ => 30 };
        var output = new Option<string>("--out") { Description = "Directory for the JSON result", DefaultValueFactory = _ => Path.Combine("benchmarks", "results") };
        var optimization = new Option<ILGPU.OptimizationLevel>("--optimize") { Description = "ILGPU's optimisation level: O1 (its default) or O2 (loop unrolling and more)", DefaultValueFactory = _ => ILGPU.OptimizationLevel.O1 };
        var command = new Command("bench", "ILGPU vs NVRTC on one GPU, f32 weights and KV: decode step and prefill with CUDA events, fraction of the copy roofline, time per stage")
        {
            model, shape, context, prefill, repeats, output, optimization,
        };
        command.SetAction(parse =>
        {
            var (checkpoint, name) = BenchModel.Open(parse.GetValue(model), parse.GetValue(shape), DType.F32);
            using var owned = checkpoint;
            var level = parse.GetValue(optimization);
            string levelName = $"O{(int)level}";   // O1's other name is Release
            using var device = IlgpuDevice.Open(preferCuda: true, level);
            if (!device.IsCuda)
            {
                Console.Error.WriteLine($"ilgpu bench needs a CUDA GPU; ILGPU found only its {device.Name}.");
                return 1;
            }
            if (!CudaDevice.IsAvailable(out string? why))
            {
                Console.Error.WriteLine($"ilgpu bench times the NVRTC backend beside ILGPU, and it cannot run here: {why}");
                return 1;
            }
            int decodeContext = parse.GetValue(context), promptLength = parse.GetValue(prefill), repeat = parse.GetValue(repeats);
            int[] prompt = new Core.Numerics.SeededRandom(5).NextTokens(Math.Max(decodeContext, promptLength), 3, checkpoint.Config.VocabSize);
            int kvTokens = Math.Max(decodeContext, promptLength) + promptLength + 2 * repeat + 64;
            Console.WriteLine($"{device.Name} (kernels at {levelName}); model {name}, f32 weights and KV, decode at {decodeContext} tokens, prefill of {promptLength}");

            // One backend after the other (each holds the GPU through its own CUDA context), the same work and the same clock.
            var stream = device.Accelerator.DefaultStream;
            long start = Stopwatch.GetTimestamp();
            BackendSpeed ilgpuSpeed;
            using (var ilgpu = new IlgpuTransformer(checkpoint, device.Accelerator, maxTokens: promptLength, kvTokens: kvTokens, maxSequences: 1))
            {
                double loadSeconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                using var timeline = new IlgpuTimeline(device.Accelerator);
                ilgpuSpeed = BackendSpeed.Measure(ilgpu, prompt, decodeContext, promptLength, repeat, work =>
                    {
                        using var from = stream.AddProfilingMarker();
                        work();
                        using var to = stream.AddProfilingMarker();
                        to.Synchronize();
                        return to.MeasureFrom(from).TotalMilliseconds;
                    },
                    work =>
                    {
                        ilgpu.Timeline = timeline;
                        try
                        {
                            work();
                            return timeline.Totals();
                        }
                        finally { ilgpu.Timeline = null; }
                    }) with { LoadSeconds = loadSeconds };
            }
            using var gpu = CudaDevice.Open();
            start = Stopwatch.GetTimestamp();
            double copy = CudaCommand.CopyBandwidth(gpu, repeat);
            BackendSpeed nvrtcSpeed;
            using (var nvrtc = new CudaTransformer(checkpoint, gpu, DType.F32, DType.F32, maxTokens: promptLength, kvTokens: kvTokens, maxSequences: 1))
            {
                double loadSeconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                using var timeline = new CudaTimeline(gpu);
                nvrtcSpeed = BackendSpeed.Measure(nvrtc, prompt, decodeContext, promptLength, repeat, work => gpu.Time(work, 1)[0],
                    work =>
                    {
                        nvrtc.Timeline = timeline;
                        try
                        {
                            work();
                            timeline.Close();
                            return timeline.Totals();
                        }
                        finally { nvrtc.Timeline = null; }
                    }) with { LoadSeconds = loadSeconds };
            }

            // Bytes a decode step must read: the f32 weights, and the sequence's f32 K and V so far.
            var c = checkpoint.Config;
            double bytes = checkpoint.BytesReadPerToken + 2.0 * c.LayerCount * c.KvDim * sizeof(float) * (decodeContext + 5);
            var figures = new Dictionary<string, double> { ["copy_GB_per_s"] = copy, ["decode_bytes_per_token"] = bytes };
            foreach (var (tag, speed) in new[] { ("ilgpu", ilgpuSpeed), ("nvrtc", nvrtcSpeed) })
            {
                figures[$"{tag}_load_s"] = speed.LoadSeconds;
                figures[$"{tag}_decode_step_ms"] = speed.DecodeMs;
                figures[$"{tag}_decode_step_host_ms"] = speed.HostDecodeMs;
                figures[$"{tag}_decode_tokens_per_s"] = 1e3 / speed.DecodeMs;
                figures[$"{tag}_decode_fraction_of_copy_roofline"] = bytes / (speed.DecodeMs / 1e3) / 1e9 / copy;
                figures[$"{tag}_prefill_{promptLength}_tokens_per_s"] = promptLength / (speed.PrefillMs / 1e3);
            }
            figures["ilgpu_over_nvrtc_decode_time"] = ilgpuSpeed.DecodeMs / nvrtcSpeed.DecodeMs;
            figures["ilgpu_over_nvrtc_prefill_time"] = ilgpuSpeed.PrefillMs / nvrtcSpeed.PrefillMs;
            PrintStages($"decode step at {decodeContext} tokens (eager)", ilgpuSpeed.DecodeStages, nvrtcSpeed.DecodeStages);
            PrintStages($"prefill of {promptLength} tokens", ilgpuSpeed.PrefillStages, nvrtcSpeed.PrefillStages);
            var result = new BenchResult($"ilgpu-{levelName.ToLowerInvariant()}", name, "F32", "F32", 1, figures, $"{gpu.Name} sm_{gpu.Architecture}", DateTimeOffset.UtcNow);
            result.Print();
            result.Save(parse.GetValue(output)!);
            return 0;
        });
        return command;
    }

    /// <summary>Per-stage µs of both backends side by side (a stage only one backend has shows "-" for the other).</summary>
    private static void PrintStages(string what, Dictionary<string, double> ilgpu, Dictionary<string, double> nvrtc)
    {
        Console.WriteLine($"  stages of one {what}, µs:        ILGPU      NVRTC   ILGPU/NVRTC");
        foreach (string label in ilgpu.Keys.Union(nvrtc.Keys).OrderByDescending(l => ilgpu.GetValueOrDefault(l) + nvrtc.GetValueOrDefault(l)))
        {
            string Cell(Dictionary<string, double> stages) => stages.TryGetValue(label, out double ms) ? $"{ms * 1e3,10:F1}" : $"{"-",10}";
            string ratio = ilgpu.TryGetValue(label, out double a) && nvrtc.TryGetValue(label, out double b) && b > 0 ? $"{a / b,10:F2}" : "";
            Console.WriteLine($"    {label,-30} {Cell(ilgpu)} {Cell(nvrtc)} {ratio}");
        }
        Console.WriteLine($"    {"total",-30} {ilgpu.Values.Sum() * 1e3,10:F1} {nvrtc.Values.Sum() * 1e3,10:F1}");
    }

    /// <summary>One backend's medians: a greedy decode step, a whole prefill, and each one's time per stage (ms).</summary>
    private sealed record BackendSpeed(double DecodeMs, double PrefillMs, Dictionary<string, double> DecodeStages, Dictionary<string, double> PrefillStages)
    {
        public double LoadSeconds { get; init; }

        /// <summary>The decode step's median by the host's clock (call to return).</summary>
        public double HostDecodeMs { get; init; }

        /// <summary>
        /// Times greedy decode steps after <paramref name="context"/> tokens and prefills of <paramref name="prefill"/> tokens
        /// with <paramref name="time"/> (device ms of the work), after warm-up; <paramref name="stages"/> runs work with the
        /// backend's timeline on and returns ms per stage.
        /// </summary>
        public static BackendSpeed Measure(IForwardBackend backend, int[] prompt, int context, int prefill, int repeats, Func<Action, double> time,
            Func<Action, Dictionary<string, double>> stages)
        {
            int sequence = backend.CreateSequence();
            int[] sequences = [sequence], one = [1], token = [7], next = [0];
            backend.Prefill(sequence, prompt.AsSpan(0, context), default);
            void Step() => backend.StepDraw(sequences, one, token, default, [TokenDraw.Greedy], next);
            for (int w = 0; w < 5; w++) Step();
            var decode = new double[repeats];
            var host = new double[repeats];
            for (int r = 0; r < repeats; r++)
            {
                long start = Stopwatch.GetTimestamp();
                decode[r] = time(Step);
                host[r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
            var decodeStages = Average(stages, Step, 8);
            backend.ReleaseSequence(sequence);

            var logits = new float[backend.Config.VocabSize];
            void Prefill()
            {
                int s = backend.CreateSequence();
                backend.Prefill(s, prompt.AsSpan(0, prefill), logits);
                backend.ReleaseSequence(s);
            }
            Prefill();
            var prefills = new double[Math.Max(3, repeats / 5)];
            for (int r = 0; r < prefills.Length; r++) prefills[r] = time(Prefill);
            return new BackendSpeed(Statistics.Median(decode), Statistics.Median(prefills), decodeStages, Average(stages, Prefill, 3)) { HostDecodeMs = Statistics.Median(host) };
        }

        private static Dictionary<string, double> Average(Func<Action, Dictionary<string, double>> stages, Action work, int runs)
        {
            var sum = new Dictionary<string, double>();
            for (int r = 0; r < runs; r++)
                foreach (var (label, ms) in stages(work)) sum[label] = sum.GetValueOrDefault(label) + ms / runs;
            return sum;
        }
    }
}
