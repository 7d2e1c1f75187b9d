using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using KvPacket.Cli.Bench;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Training;
using KvPacket.Training.Cuda;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket cuda train-check|train-bench</c>: the GPU trainer against the CPU reference (gradients of every tensor
/// and of adapter rows, f32 and bf16 operands, with and without recomputed activations), and its speed (tokens/s and
/// model FLOPs utilisation, CUDA events after warm-up, medians).
/// </summary>
internal static class CudaTrainCommand
{
    /// <summary>The dense bf16 tensor-core peak of the H100/H200 SXM (NVIDIA's datasheet, without sparsity), for MFU.</summary>
    private const double HopperDenseBf16TeraFlops = 989.4;

    public static IEnumerable<Command> Create() => [Check(), Bench(), DistillBench()];

    private static Command Check()
    {
        var model = new Option<string?>("--model", "-m") { Description = "Checkpoint path" };
        var shape = new Option<string?>("--shape") { Description = "Model card to synthesise instead (random weights)" };
        var layers = new Option<int>("--layers") { Description = "With --shape: keep only this many layers (0: all)", DefaultValueFactory = _ => 2 };
        var sequences = new Option<int>("--sequences") { Description = "Sequences per batch", DefaultValueFactory = _ => 3 };
        var length = new Option<int>("--length") { Description = "Tokens per causal sequence", DefaultValueFactory = _ => 40 };
        var dump = new Option<string?>("--dump") { Description = "Directory to write each batch's model, batch and gradients into, for benchmarks/gpu/torch_grad.py" };
        var command = new Command("train-check", "GPU training gradients vs the CPU reference (float64): causal LM and KV Packet student batches, f32 and bf16")
        {
            model, shape, layers, sequences, length, dump,
        };
        command.SetAction(parse => BenchModel.OnGpu(parse.GetValue(model), parse.GetValue(shape), DType.F32, (checkpoint, name, device) =>
            {
                var config = checkpoint.Config;
                Console.WriteLine($"{device.Name} (sm_{device.Architecture}); model {name}: hidden {config.HiddenSize}, {config.LayerCount} layers, heads {config.HeadCount}/{config.KvHeadCount}, vocab {config.VocabSize}");
                var causal = CudaGradientCheck.CausalBatch(config, parse.GetValue(sequences), parse.GetValue(length), seed: 7);
                var student = CudaGradientCheck.StudentBatch(config, parse.GetValue(sequences), seed: 8);
                var soft = CudaGradientCheck.SoftRows(TrainingWeights<float>.From(checkpoint), config.HiddenSize,
                    CudaGradientCheck.StudentHeader + CudaGradientCheck.StudentTrailer, seed: 9);
                bool ok = true;
                var dumps = new Dictionary<string, TensorDump>();
                // bf16 runs with the fused attention where the head dim has it, and with kept probabilities.
                foreach (var (operand, recompute, flash) in new[] { (DType.F32, false, false), (DType.F32, true, false), (DType.BF16, false, true), (DType.BF16, true, true), (DType.BF16, false, false) })
                    foreach (var (batchName, batch, rows) in new[] { ("causal LM", causal, Array.Empty<float>()), ("KV Packet student", student, soft) })
                    {
                        TensorDump? tensors = null;
                        if (parse.GetValue(dump) is { } root && !dumps.TryGetValue(batchName, out tensors))
                            dumps[batchName] = tensors = CudaGradientCheck.Dump(Path.Combine(root, batchName.Replace(' ', '-')), checkpoint, batch, rows.Length / config.HiddenSize);
                        var result = CudaGradientCheck.Run(device, checkpoint, batchName, batch, rows, operand, recompute, tensors, flash);
                        if (flash && !result.Flash) continue;   // no fused kernel for this head dim: the kept-probabilities run covers it
                        double limit = operand == DType.F32 ? 1e-3 : 3e-2;
                        double lossError = Math.Abs(result.GpuLoss - result.CpuLoss) / Math.Abs(result.CpuLoss);
                        bool pass = result.Worst.Relative <= limit && lossError <= limit;
                        ok &= pass;
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  {batchName,-18} {operand,-4}{(recompute ? " recompute" : "          ")}{(result.Flash ? " flash" : "      ")}: loss CPU {result.CpuLoss:F6} GPU {result.GpuLoss:F6} (rel {lossError:E1}); " +
                            $"worst gradient {result.Worst.Name} {result.Worst.Relative:E2}, median {Statistics.Median(result.Errors.Select(e => e.Relative)):E2} over {result.Errors.Count} tensors → {(pass ? "PASS" : "FAIL")} (limit {limit:E0})"));
                        if (!pass)
                            foreach (var e in result.Errors.Where(e => e.Relative > limit).Take(12))
                                Console.WriteLine($"      {e.Name}: {e.Relative:E2} (|cpu| {e.CpuNorm:E2})");
                    }
                foreach (var tensors in dumps.Values) tensors.Save();
                foreach (var operand in new[] { DType.F32, DType.BF16 })
                    foreach (var r in CudaDistillationCheck.Run(checkpoint, operand))
                    {
                        double limit = operand == DType.F32 ? 1e-3 : 3e-2, error = Math.Abs(r.GpuLoss - r.EngineKl) / r.EngineKl;
                        bool pass = error <= limit;
                        ok &= pass;
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  distillation {r.Mode,-8} {operand,-4}: engine KL {r.EngineKl:F6}, GPU student loss {r.GpuLoss:F6} (rel {error:E1}), CPU student {r.CpuLoss:F6} → {(pass ? "PASS" : "FAIL")} (limit {limit:E0})"));
                    }
                return ok ? 0 : 1;
            }, layers: parse.GetValue(layers)));
        return command;
    }

    private static Option<bool> KeptAttention() => new("--kept-attention") { Description = "Keep the attention probabilities (cuBLAS products) instead of the fused flash kernels" };

    private static Command DistillBench()
    {
        var shape = new Option<string>("--shape") { Description = "Model card (random bf16 weights, frozen)", DefaultValueFactory = _ => "llama-3.2-1b" };
        var documents = new Option<int>("--documents") { Description = "Documents per example", DefaultValueFactory = _ => 4 };
        var documentTokens = new Option<int>("--document-tokens") { Description = "Tokens per document", DefaultValueFactory = _ => 512 };
        var continuation = new Option<int>("--continuation") { Description = "Continuation tokens per example (the last half scored)", DefaultValueFactory = _ => 32 };
        var batchSize = new Option<int>("--batch") { Description = "Examples per step", DefaultValueFactory = _ => 4 };
        var header = new Option<int>("--header") { Description = "KV Packet header rows", DefaultValueFactory = _ => 4 };
        var trailer = new Option<int>("--trailer") { Description = "KV Packet trailer rows", DefaultValueFactory = _ => 4 };
        var repeats = new Option<int>("--repeats") { Description = "Timed steps after warm-up (median reported)", DefaultValueFactory = _ => 10 };
        var recompute = new Option<bool>("--recompute-activations") { Description = "Recompute each layer in the backward pass" };
        var kept = KeptAttention();
        var command = new Command("distill-bench", "KV Packet adapter distillation steps on the GPU (frozen bf16 model): examples/s and device memory")
        {
            shape, documents, documentTokens, continuation, batchSize, header, trailer, repeats, recompute, kept,
        };
        command.SetAction(parse => BenchModel.OnGpu(null, parse.GetValue(shape), DType.BF16, (checkpoint, name, device) =>
            {
                var config = checkpoint.Config;
                int b = parse.GetValue(batchSize), h = parse.GetValue(header), t = parse.GetValue(trailer), k = parse.GetValue(continuation);
                var random = new Core.Numerics.SeededRandom(11);
                var examples = new List<DistillationExample>();
                for (int e = 0; e < b; e++)
                {
                    int[][] docs = [.. Enumerable.Range(0, parse.GetValue(documents)).Select(_ => random.NextTokens(parse.GetValue(documentTokens), 0, config.VocabSize))];
                    var teacher = new float[k * config.VocabSize];
                    Array.Fill(teacher, 1f / config.VocabSize);
                    examples.Add(new DistillationExample([config.BosTokenId ?? 1], docs, random.NextTokens(k, 0, config.VocabSize), teacher, FirstScoredRow: k / 2));
                }
                var layouts = examples.Select(e => StudentLayout.Of(e, Engine.Rag.RagMode.KvPacket, h, t, 0)).ToList();
                var batch = TrainingBatch.Students(examples, layouts, config.VocabSize);
                var weights = TrainingWeights<float>.From(checkpoint);
                var soft = CudaGradientCheck.SoftRows(weights, config.HiddenSize, h + t, seed: 2);
                using var model = new CudaTrainingModel(device, config, weights, new CudaTrainingOptions(DType.BF16, TrainWeights: false, parse.GetValue(recompute), !parse.GetValue(kept)),
                    b, batch.Length, h + t, soft, batch.Teacher.Length / config.VocabSize);
                void Step()
                {
                    model.ForwardBackward(batch, 1.0 / b);
                    model.DownloadSoftGradients();
                    model.ZeroGradients();
                }
                for (int i = 0; i < 2; i++) Step();
                var times = device.Time(Step, parse.GetValue(repeats));
                double ms = Statistics.Median(times);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"distill {name} bf16 frozen, KV Packet H/T {h}/{t}, {b} examples x ({parse.GetValue(documents)} x {parse.GetValue(documentTokens)}-token documents + {k} continuation) = {batch.Length} rows each" +
                    $"{(parse.GetValue(recompute) ? ", recompute" : "")}{(model.FlashAttention ? ", flash" : ", kept attention")}: step {ms:F1} ms (median of {times.Length}), {b / (ms / 1e3):F1} examples/s, {b * (long)batch.Length / (ms / 1e3):F0} rows/s; " +
                    $"device memory {model.DeviceBytes / 1e9:F2} GB"));
                return 0;
            }));
        return command;
    }

    private static Command Bench()
    {
        var shape = new Option<string>("--shape") { Description = "Model card", DefaultValueFactory = _ => "llama-50m" };
        var sequences = new Option<int>("--batch") { Description = "Sequences per step", DefaultValueFactory = _ => 16 };
        var length = new Option<int>("--length") { Description = "Tokens per sequence", DefaultValueFactory = _ => 1024 };
        var repeats = new Option<int>("--repeats") { Description = "Timed steps after warm-up (median reported)", DefaultValueFactory = _ => 10 };
        var operand = new Option<DType>("--operand") { Description = "BF16 or F32", DefaultValueFactory = _ => DType.BF16 };
        var recompute = new Option<bool>("--recompute-activations") { Description = "Recompute each layer in the backward pass" };
        var kept = KeptAttention();
        var output = new Option<string?>("--out") { Description = "JSON file for the figures" };
        var command = new Command("train-bench", "Full training steps on the GPU: tokens/s and model FLOPs utilisation (CUDA events, medians)")
        {
            shape, sequences, length, repeats, operand, recompute, kept, output,
        };
        command.SetAction(parse =>
        {
            if (!CudaDevice.IsAvailable(out string reason)) { Console.Error.WriteLine($"no GPU: {reason}"); return 2; }
            var config = ModelCard.Find(parse.GetValue(shape)!).Config;
            int b = parse.GetValue(sequences), n = parse.GetValue(length);
            using var device = CudaDevice.Open();
            var weights = WeightInitialisation.Random(config, seed: 1);
            using var model = new CudaTrainingModel(device, config, weights, new CudaTrainingOptions(parse.GetValue(operand), true, parse.GetValue(recompute), !parse.GetValue(kept)), b, n);
            var batch = CudaGradientCheck.CausalBatch(config, b, n, seed: 3);
            double scale = 1 / batch.TotalWeight;
            void Step()
            {
                model.ForwardBackward(batch, scale);
                model.Step(1e-4, 1.0, 0.1);
            }
            double firstLoss = model.Loss(batch, scale);
            for (int i = 0; i < 3; i++) Step();
            var times = device.Time(Step, parse.GetValue(repeats));
            double lastLoss = model.Loss(batch, scale);
            using (var timeline = new CudaTimeline(device))
            {
                model.Timeline = timeline;
                Step();
                timeline.Close();
                model.Timeline = null;
                var stages = timeline.Totals();
                double total = stages.Values.Sum();
                Console.WriteLine($"  one eager step by stage ({total:F2} ms):");
                foreach (var (label, stageMs) in stages.OrderByDescending(s => s.Value))
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"    {label,-36} {stageMs,8:F2} ms {stageMs / total,6:P0}"));
            }
            double ms = Statistics.Median(times);
            long tokens = (long)b * n;
            // Model FLOPs (PaLM's accounting, causal attention at half the n×n): 6 per matrix parameter per token (the
            // classifier included), plus 6·n·(H·d) per layer per token for the attention products.
            long matrices = (long)config.LayerCount * (2L * config.QueryDim * config.HiddenSize + 2L * config.KvDim * config.HiddenSize + 3L * config.IntermediateSize * config.HiddenSize)
                + (long)config.VocabSize * config.HiddenSize;
            double flopsPerToken = 6.0 * matrices + 6.0 * config.LayerCount * n * config.QueryDim;
            double teraFlops = flopsPerToken * tokens / (ms / 1e3) / 1e12;
            long parameters = model.Layout.Count;
            var figures = new Dictionary<string, object>
            {
                ["device"] = device.Name, ["shape"] = parse.GetValue(shape)!, ["parameters"] = parameters, ["batch"] = b, ["length"] = n,
                ["operand"] = parse.GetValue(operand).ToString(), ["recompute_activations"] = parse.GetValue(recompute), ["flash_attention"] = model.FlashAttention,
                ["step_ms_median"] = ms, ["step_ms_all"] = times, ["tokens_per_s"] = tokens / (ms / 1e3), ["model_tflops"] = teraFlops,
                ["mfu_vs_dense_bf16_peak"] = teraFlops / HopperDenseBf16TeraFlops, ["device_bytes"] = model.DeviceBytes,
                ["loss_before"] = firstLoss, ["loss_after"] = lastLoss,
            };
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"ours  {parse.GetValue(shape)} ({parameters / 1e6:F1}M params) {parse.GetValue(operand)}{(parse.GetValue(recompute) ? " recompute" : "")}{(model.FlashAttention ? " flash" : " kept-attention")} batch {b}x{n}: " +
                $"step {ms:F2} ms (median of {times.Length}), {tokens / (ms / 1e3):F0} tokens/s, {teraFlops:F1} TFLOP/s = MFU {teraFlops / HopperDenseBf16TeraFlops:P1} of {HopperDenseBf16TeraFlops} dense bf16; " +
                $"device memory {model.DeviceBytes / 1e9:F2} GB; loss {firstLoss:F3} → {lastLoss:F3} over {3 + times.Length} steps on one batch"));
            if (parse.GetValue(output) is { } file) File.WriteAllText(file, JsonSerializer.Serialize(figures, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        });
        return command;
    }
}
