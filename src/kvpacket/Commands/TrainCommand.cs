using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using KvPacket.Cli.Training;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Store;
using KvPacket.Training;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket train</c>: distils a KV Packet header/trailer or KVLink links on a training split with early stopping on a
/// held-out split, checkpointing (and resuming) the run, and stores the best adapter as the next version in a packet store.
/// </summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var mode = new Option<string>("--mode") { Description = "kvpacket (header/trailer) or kvlink (links)", DefaultValueFactory = _ => "kvpacket" };
        mode.AcceptOnlyFromAmong("kvpacket", "kvlink");
        var model = CommonOptions.Model();
        var shapeOptions = new RequestShapeOptions();
        var header = new Option<int>("--header") { Description = "Header soft tokens (kvpacket)", DefaultValueFactory = _ => 4 };
        var trailer = new Option<int>("--trailer") { Description = "Trailer soft tokens (kvpacket)", DefaultValueFactory = _ => 4 };
        var links = new Option<int>("--links") { Description = "Link tokens per document (kvlink)", DefaultValueFactory = _ => 5 };
        var steps = new Option<int>("--steps") { Description = "Optimiser steps", DefaultValueFactory = _ => 300 };
        var batch = new Option<int>("--batch") { Description = "Examples per step", DefaultValueFactory = _ => 4 };
        var learningRate = new Option<double>("--learning-rate") { Description = "Peak learning rate (AdamW, warm-up then cosine)", DefaultValueFactory = _ => 0.03 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps", DefaultValueFactory = _ => 15 };
        var clip = new Option<double>("--clip") { Description = "Gradient norm limit", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the example order", DefaultValueFactory = _ => 1UL };
        var evaluateEvery = new Option<int>("--eval-every") { Description = "Steps between held-out evaluations and checkpoints", DefaultValueFactory = _ => 25 };
        var patience = new Option<int>("--patience") { Description = "Evaluations without improvement before stopping (0: never)", DefaultValueFactory = _ => 4 };
        var trainExamples = new Option<int>("--train-examples") { Description = "Training requests", DefaultValueFactory = _ => 128 };
        var heldOut = new Option<int>("--held-out") { Description = "Held-out requests", DefaultValueFactory = _ => 16 };
        var continuation = new Option<int>("--continuation") { Description = "Greedy continuation tokens scored after the query", DefaultValueFactory = _ => 8 };
        var checkpointPath = new Option<string?>("--checkpoint") { Description = "Run state file: saved at every evaluation, resumed from when it exists" };
        var recompute = new Option<bool>("--recompute-activations") { Description = "Recompute activations in the backward pass (less memory)" };
        var threads = CommonOptions.Threads();
        var qa = new Option<string?>("--qa") { Description = "A QA benchmark split (JSONL): its first --train-examples questions train, the next --held-out evaluate (instead of --docs)" };
        var device = new Option<TrainingDevice>("--device") { Description = "Where the students run: cpu (the reference) or cuda", DefaultValueFactory = _ => TrainingDevice.Cpu };
        var operand = new Option<DType>("--operand") { Description = "With --device cuda: F32 (as the CPU) or BF16 matrix operands", DefaultValueFactory = _ => DType.F32 };
        var store = new Option<string?>("--store") { Description = "Packet store to save the trained adapter into (as the next version)" };
        var name = new Option<string?>("--name") { Description = "Adapter name (default: the mode)" };
        var output = new Option<string?>("--out") { Description = "JSON summary path" };
        var command = new Command("train", "Distil KV Packet header/trailer or KVLink link tokens with the model frozen")
        {
            mode, model, header, trailer, links, steps, batch, learningRate, warmup, clip, seed, evaluateEvery, patience, trainExamples, heldOut,
            continuation, checkpointPath, recompute, threads, qa, device, operand, store, name, output,
        };
        shapeOptions.AddTo(command);
        command.SetAction(async (parse, cancellation) =>
        {
            string modelPath = parse.GetValue(model)!;
            using var checkpoint = CheckpointLoader.Load(modelPath);
            var shape = shapeOptions.Shape(parse, parse.GetValue(continuation));
            bool kvlink = parse.GetValue(mode) == "kvlink";
            var options = new DistillationOptions
            {
                Mode = kvlink ? RagMode.KvLink : RagMode.KvPacket,
                Header = kvlink ? 0 : parse.GetValue(header), Trailer = kvlink ? 0 : parse.GetValue(trailer), Links = kvlink ? parse.GetValue(links) : 0,
                Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batch), LearningRate = parse.GetValue(learningRate), WarmupSteps = parse.GetValue(warmup),
                ClipNorm = parse.GetValue(clip), Seed = parse.GetValue(seed), EvaluateEvery = parse.GetValue(evaluateEvery), Patience = parse.GetValue(patience),
                RecomputeActivations = parse.GetValue(recompute), Threads = parse.GetValue(threads), CheckpointPath = parse.GetValue(checkpointPath),
                Name = parse.GetValue(name) ?? parse.GetValue(mode)!, Device = parse.GetValue(device), Operand = parse.GetValue(operand),
            };
            options.Validate();

            var clock = Stopwatch.StartNew();
            using var transformer = new Transformer(checkpoint, new TransformerOptions
            {
                KvType = DType.F32, MaxBatchTokens = 256,
                KvCacheTokens = Math.Max(8192, 4 * (shape.Documents + 2) * (shape.DocumentTokens + shape.GreedyTokens + 64)),
            });
            DistillationExample[] train, held;
            if (parse.GetValue(qa) is { } split)
            {
                var tokenizer = Core.Tokenization.TokenizerLoader.TryLoadNextTo(modelPath)
                    ?? throw new InvalidOperationException($"{modelPath}: --qa needs the model's tokenizer.json next to it");
                var read = KvPacket.Training.Qa.QaBenchmark.Read(split).Take(parse.GetValue(trainExamples) + parse.GetValue(heldOut));
                DistillationExample[] questions;
                if (options.Device == TrainingDevice.Cuda)
                {
                    // Teachers on the GPU in f32 (weights and KV, as the CPU's), 64 questions a wave.
                    using var gpu = Backends.Open(checkpoint, BackendDevice.Cuda, new TransformerOptions
                    {
                        KvType = DType.F32, MaxBatchTokens = 2048, MaxBatchSequences = 64, KvCacheTokens = 64 * (checkpoint.Config.MaxContextLength + 64),
                    }, out _, DType.F32);
                    questions = KvPacket.Training.Qa.QaDistillation.Examples(gpu, tokenizer, read);
                }
                else questions = KvPacket.Training.Qa.QaDistillation.Examples(transformer, tokenizer, read);
                if (questions.Length <= parse.GetValue(heldOut)) throw new InvalidDataException($"--qa {split}: {questions.Length} questions; {parse.GetValue(heldOut)} held-out + at least 1 training question are needed");
                (train, held) = (questions[..^parse.GetValue(heldOut)], questions[^parse.GetValue(heldOut)..]);
            }
            else
            {
                var (trainRequests, heldOutRequests) = DistillationSets.Requests(parse.GetValue(shapeOptions.Docs)!, modelPath, transformer, shape, parse.GetValue(trainExamples), parse.GetValue(heldOut));
                train = DistillationSets.Examples(transformer, trainRequests, shape);
                held = DistillationSets.Examples(transformer, heldOutRequests, shape);
            }
            string what = parse.GetValue(qa) is not null
                ? "QA questions: all their documents, the question and its answer"
                : $"{shape.Documents} × {shape.DocumentTokens}-token documents, {shape.QueryTokens} query + {shape.GreedyTokens} continuation tokens";
            Console.Error.WriteLine($"{train.Length} training and {held.Length} held-out examples ({what}) with teacher distributions in {clock.Elapsed.TotalSeconds:F1} s");

            string title = kvlink ? $"kvlink L={options.Links}" : $"kvpacket H/T={options.Header}/{options.Trailer}";
            var run = TrainingDisplay.Run(title, new AdapterDistillation(checkpoint, options), train, held, options.Steps, cancellation);
            long peak = Process.GetCurrentProcess().PeakWorkingSet64;
            Console.WriteLine($"peak working set {peak / 1048576.0:F0} MiB"); // the run's own summary is TrainingDisplay's

            var adapter = run.Adapter;
            if (parse.GetValue(store) is { } storePath)
            {
                using var packets = PacketStore.Open(storePath);
                adapter = adapter with { Version = packets.AdapterVersions(adapter.Id).DefaultIfEmpty(0).Max() + 1 };
                await packets.PutAdapterAsync(adapter, ModelFingerprint.Of(checkpoint), checkpoint.Config.HiddenSize, cancellation);
                Console.WriteLine($"stored adapter {adapter.Id} version {adapter.Version} in {storePath}");
            }
            if (parse.GetValue(output) is { } path)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
                File.WriteAllText(path, JsonSerializer.Serialize(new
                {
                    model = Path.GetFileName(modelPath), mode = parse.GetValue(mode), options.Header, options.Trailer, options.Links, options.Steps, batch = options.BatchSize,
                    learning_rate = options.LearningRate, device = options.Device.ToString().ToLowerInvariant(), operand = options.Operand.ToString(), train_examples = train.Length, held_out_examples = held.Length,
                    initial_held_out_kl = run.InitialHeldOutKl, best_held_out_kl = run.BestHeldOutKl, best_step = run.BestStep, steps_run = run.StepsRun,
                    stopped_early = run.StoppedEarly, examples_per_second = run.ExamplesPerSecond, rows_per_second = run.RowsPerSecond, peak_working_set_bytes = peak,
                    adapter_version = adapter.Version,
                }, new JsonSerializerOptions { WriteIndented = true }));
            }
            return 0;
        });
        return command;
    }
}
