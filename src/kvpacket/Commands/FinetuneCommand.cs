using System.CommandLine;
using System.Globalization;
using KvPacket.Cli.Training;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Store;
using KvPacket.Training;
using KvPacket.Training.Cuda;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket finetune --mode kvlink</c>: KVLink's recipe — the whole model fine-tuned with its link tokens on mixed data
/// (full attention and separately encoded documents), on the GPU; writes the model as a Hugging Face directory and the
/// links as an adapter in a packet store. <c>--mode full</c>: the whole model on full attention alone (more training of
/// the base model on the answers scored, e.g. to teach it a new answer format), no links.
/// </summary>
internal static class FinetuneCommand
{
    public static Command Create()
    {
        var mode = new Option<string>("--mode") { Description = "kvlink (the whole model with its link tokens, on mixed data) or full (the whole model, full attention only)", DefaultValueFactory = _ => "kvlink" };
        mode.AcceptOnlyFromAmong("kvlink", "full");
        var model = CommonOptions.Model();
        var shapeOptions = new RequestShapeOptions();
        var links = new Option<int>("--links") { Description = "Link tokens per document", DefaultValueFactory = _ => 5 };
        var steps = new Option<int>("--steps") { Description = "Optimiser steps", DefaultValueFactory = _ => 300 };
        var batch = new Option<int>("--batch") { Description = "Examples per step", DefaultValueFactory = _ => 8 };
        var learningRate = new Option<double>("--learning-rate") { Description = "Peak learning rate", DefaultValueFactory = _ => 1e-4 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps", DefaultValueFactory = _ => 20 };
        var full = new Option<double>("--full-fraction") { Description = "Share of examples trained with full attention (the rest with separate documents and links)", DefaultValueFactory = _ => 0.5 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the example order", DefaultValueFactory = _ => 1UL };
        var trainExamples = new Option<int>("--train-examples") { Description = "Training requests", DefaultValueFactory = _ => 512 };
        var heldOut = new Option<int>("--held-out") { Description = "Held-out requests", DefaultValueFactory = _ => 32 };
        var operand = new Option<DType>("--operand") { Description = "BF16 or F32 matrix operands", DefaultValueFactory = _ => DType.BF16 };
        var evaluateEvery = new Option<int>("--eval-every") { Description = "Steps between held-out evaluations and checkpoints", DefaultValueFactory = _ => 50 };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "Run state file, resumed from when it exists" };
        var output = new Option<string>("--out") { Description = "Directory for the fine-tuned model", Required = true };
        var store = new Option<string?>("--store") { Description = "Packet store to save the link adapter into (for the fine-tuned model)" };
        var qa = new Option<string?>("--qa") { Description = "A QA benchmark split (JSONL): its first --train-examples questions train, the next --held-out evaluate, the answer scored (instead of --docs)" };
        var shard = new Option<int>("--max-shard-mb") { Description = "Write the safetensors in shards of at most this many MB (0: one file)", DefaultValueFactory = _ => 0 };
        var timeLimit = new Option<double>("--time-limit") { Description = "Seconds after which the run stops at the next evaluation and writes what it has (0: none)", DefaultValueFactory = _ => 0 };
        var stopAfter = new Option<int>("--stop-after") { Description = "Stop after this step as a spent --time-limit would, the schedule still spanning --steps (0: none)", DefaultValueFactory = _ => 0 };
        var command = new Command("finetune", "Fine-tune the whole model with KVLink link tokens on mixed data, or on full attention alone (GPU)")
        {
            mode, model, links, steps, batch, learningRate, warmup, full, seed, trainExamples, heldOut, operand, evaluateEvery, checkpoint, output, store, qa, timeLimit, stopAfter, shard,
        };
        shapeOptions.AddTo(command);
        command.SetAction(async (parse, cancellation) =>
        {
            if (!CudaDevice.IsAvailable(out string reason)) { Console.Error.WriteLine($"no GPU: {reason}"); return 2; }
            string modelPath = parse.GetValue(model)!;
            using var source = CheckpointLoader.Load(modelPath);
            var shape = shapeOptions.Shape(parse, 0);
            var (train, held) = parse.GetValue(qa) is { } split
                ? QaExamples(split, modelPath, parse.GetValue(trainExamples), parse.GetValue(heldOut))
                : RequestExamples(parse.GetValue(shapeOptions.Docs)!, modelPath, source, shape, parse.GetValue(trainExamples), parse.GetValue(heldOut));
            bool linked = parse.GetValue(mode) == "kvlink";
            var options = new FineTuningOptions
            {
                Links = parse.GetValue(links), Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batch), LearningRate = parse.GetValue(learningRate),
                WarmupSteps = parse.GetValue(warmup), FullFraction = linked ? parse.GetValue(full) : 1.0, Seed = parse.GetValue(seed), Operand = parse.GetValue(operand),
                EvaluateEvery = parse.GetValue(evaluateEvery), CheckpointPath = parse.GetValue(checkpoint),
                TimeLimit = parse.GetValue(timeLimit) > 0 ? TimeSpan.FromSeconds(parse.GetValue(timeLimit)) : null,
                StopAfter = parse.GetValue(stopAfter) > 0 ? parse.GetValue(stopAfter) : null,
            };
            using var device = CudaDevice.Open();
            var c = CultureInfo.InvariantCulture;
            var run = CudaKvLinkFineTuning.Run(device, source.Config, TrainingWeights<float>.From(source), ModelFingerprint.Of(source).ToString(),
                train, held, options, p =>
                {
                    if (p.Step % options.EvaluateEvery == 0 || p.Step == p.TotalSteps)
                        Console.WriteLine(string.Create(c, $"step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}, lr {p.LearningRate:E2}, held-out kvlink {p.KvLinkLoss:F4}, full {p.FullLoss:F4}, {p.Elapsed.TotalSeconds:F1} s"));
                }, cancellation);
            Console.WriteLine(string.Create(c, $"held-out next-token loss: kvlink {run.InitialKvLinkLoss:F4} → {run.KvLinkLoss:F4}, full {run.InitialFullLoss:F4} → {run.FullLoss:F4} ({run.Steps} steps, {run.Elapsed.TotalSeconds:F1} s)"));
            string directory = parse.GetValue(output)!;
            TrainedCheckpoint.WriteHuggingFace(source.Config, run.Weights, directory, parse.GetValue(operand) == DType.F32 ? DType.F32 : DType.BF16,
                new Dictionary<string, string> { ["kvpacket.finetune"] = options.Signature(modelPath) }, parse.GetValue(shard) * 1_000_000L);
            if (TokenizerLoader.FileNextTo(modelPath) is { } tokenizerFile) File.Copy(tokenizerFile, Path.Combine(directory, Path.GetFileName(tokenizerFile)), overwrite: true);
            if (!linked)
            {
                Console.WriteLine($"wrote {directory}");
                return 0;
            }
            using (var tuned = CheckpointLoader.Load(directory))
            {
                // The links belong to the fine-tuned weights: the adapter file names that model's fingerprint.
                var links = new Adapter("kvlink", 1, [], [], run.Links);
                AdapterFile.Write(Path.Combine(directory, "kvlink-adapter.safetensors"), links, ModelFingerprint.Of(tuned), tuned.Config.HiddenSize);
            }
            Console.WriteLine($"wrote {directory} (the model and kvlink-adapter.safetensors)");
            if (parse.GetValue(store) is { } storePath)
            {
                using var tuned = CheckpointLoader.Load(directory);
                using var packets = PacketStore.Open(storePath);
                var adapter = new Adapter("kvlink", packets.AdapterVersions("kvlink").DefaultIfEmpty(0).Max() + 1, [], [], run.Links);
                await packets.PutAdapterAsync(adapter, ModelFingerprint.Of(tuned), tuned.Config.HiddenSize, cancellation);
                Console.WriteLine($"stored adapter {adapter.Id} version {adapter.Version} for the fine-tuned model in {storePath}");
            }
            return 0;
        });
        return command;
    }

    /// <summary>Fine-tuning examples from a QA split: the documents, then the question and its first answer, the answer's tokens scored.</summary>
    private static (FineTuningExample[] Train, FineTuningExample[] HeldOut) QaExamples(string split, string modelPath, int trainCount, int heldOutCount)
    {
        var tokenizer = TokenizerLoader.TryLoadNextTo(modelPath) ?? throw new InvalidOperationException($"{modelPath}: --qa needs the model's tokenizer.json next to it");
        var all = QaBenchmark.Read(split).Take(trainCount + heldOutCount).Select(q => QaFineTuning.Example(tokenizer, q)).ToArray();
        if (all.Length <= heldOutCount) throw new InvalidDataException($"--qa {split}: {all.Length} questions; {heldOutCount} held-out + at least 1 training question are needed");
        return (all[..^heldOutCount], all[^heldOutCount..]);
    }

    /// <summary>
    /// Fine-tuning examples from a document source: the query (the start of a further document) is the continuation. The
    /// CPU model that generates documents ("generated") lives only while they are made.
    /// </summary>
    private static (FineTuningExample[] Train, FineTuningExample[] HeldOut) RequestExamples(string docs, string modelPath, Checkpoint source, RequestShape shape, int trainCount, int heldOutCount)
    {
        using var transformer = new Transformer(source, new TransformerOptions { KvType = DType.F32, MaxBatchTokens = 256, KvCacheTokens = 4096 });
        var (train, held) = DistillationSets.Requests(docs, modelPath, transformer, shape, trainCount, heldOutCount);
        static FineTuningExample Example(RagRequest r) => new([.. r.Prefix], [.. r.Documents], [.. r.Query]);
        return ([.. train.Select(Example)], [.. held.Select(Example)]);
    }
}
