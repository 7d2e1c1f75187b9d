using System.CommandLine;
using System.Globalization;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Training;
using KvPacket.Training.Cuda;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket pretrain</c>: trains every weight of a model from seeded random initial weights on a token file, on the
/// GPU, checkpointing and resuming, and writes a Hugging Face directory our readers (and transformers) load.
/// </summary>
internal static class PretrainCommand
{
    public static Command Create()
    {
        var card = new Option<string?>("--model-shape") { Description = "Model card (models/*.json) giving the shape" };
        var config = new Option<string?>("--config") { Description = "A Hugging Face config.json giving the shape instead" };
        var data = new Option<string>("--data") { Description = "Token file: one document per line, ids separated by spaces or commas", Required = true };
        var output = new Option<string>("--out") { Description = "Directory for config.json + model.safetensors", Required = true };
        var device = new Option<TrainingDevice>("--device") { Description = "cuda (the only device that trains whole models at useful speed)", DefaultValueFactory = _ => TrainingDevice.Cuda };
        var steps = new Option<int>("--steps") { Description = "Optimiser steps", DefaultValueFactory = _ => 1000 };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch", DefaultValueFactory = _ => 16 };
        var length = new Option<int>("--length") { Description = "Tokens per sequence", DefaultValueFactory = _ => 1024 };
        var accumulate = new Option<int>("--accumulate") { Description = "Micro-batches per step (gradient accumulation)", DefaultValueFactory = _ => 1 };
        var learningRate = new Option<double>("--learning-rate") { Description = "Peak learning rate (warm-up, then cosine to 10%)", DefaultValueFactory = _ => 1e-3 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps", DefaultValueFactory = _ => 100 };
        var decay = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay (matrices)", DefaultValueFactory = _ => 0.1 };
        var clip = new Option<double>("--clip") { Description = "Gradient norm limit (0: none)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the initial weights and the data order", DefaultValueFactory = _ => 1UL };
        var operand = new Option<DType>("--operand") { Description = "BF16 (f32 accumulation) or F32 matrix operands", DefaultValueFactory = _ => DType.BF16 };
        var recompute = new Option<bool>("--recompute-activations") { Description = "Recompute each layer in the backward pass (less memory)" };
        var checkpoint = new Option<string?>("--checkpoint") { Description = "Run state file: saved every --checkpoint-every steps, resumed from when it exists" };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Steps between checkpoints", DefaultValueFactory = _ => 200 };
        var logEvery = new Option<int>("--log-every") { Description = "Steps between progress lines", DefaultValueFactory = _ => 10 };
        var curve = new Option<string?>("--loss-curve") { Description = "CSV file the loss of every step is appended to (step, loss, learning rate, gradient norm, tokens/s)" };
        var timeLimit = new Option<double>("--time-limit") { Description = "Stop cleanly after this many seconds, checkpointing (0: none); the same command resumes" };
        var stopAfter = new Option<int>("--stop-after") { Description = "Stop after this many steps in this invocation, checkpointing (0: none); the same command resumes" };
        var tokenizerFile = new Option<string?>("--tokenizer") { Description = "tokenizer.json: sets the vocabulary size, BOS and EOS, and is copied next to the model" };
        var examples = new Option<bool>("--examples") { Description = "Each line is one example: pack whole lines into sequences (each attends only to itself) instead of cutting a stream" };
        var answerWeight = new Option<float>("--answer-weight") { Description = "Loss weight of the tokens after a line's '|' (answers)", DefaultValueFactory = _ => 1f };
        var shard = new Option<int>("--max-shard-mb") { Description = "Write the safetensors in shards of at most this many MB (0: one file)", DefaultValueFactory = _ => 0 };
        var init = new Option<string?>("--init") { Description = "Start from this Hugging Face model's weights and shape instead of random ones (continued pre-training, e.g. on longer sequences)" };
        var saveType = new Option<DType>("--save-type") { Description = "Matrix type of the written safetensors: BF16, F16 or F32", DefaultValueFactory = _ => DType.BF16 };
        var command = new Command("pretrain", "Train a whole model on a token file (GPU), from scratch or from --init, writing a Hugging Face directory")
        {
            card, config, data, output, device, steps, batch, length, accumulate, learningRate, warmup, decay, clip, seed, operand, recompute,
            checkpoint, checkpointEvery, logEvery, curve, timeLimit, stopAfter, tokenizerFile, examples, answerWeight, shard, saveType, init,
        };
        command.SetAction((parse, cancellation) =>
        {
            if (parse.GetValue(device) != TrainingDevice.Cuda)
            {
                Console.Error.WriteLine("--device: pretraining runs on cuda; the CPU trainer is the gradient reference (kvpacket cuda train-check)");
                return Task.FromResult(2);
            }
            if (!CudaDevice.IsAvailable(out string reason)) { Console.Error.WriteLine($"no GPU: {reason}"); return Task.FromResult(2); }
            using var start = parse.GetValue(init) is { } initPath ? CheckpointLoader.Load(initPath) : null;
            var shape = (parse.GetValue(card), parse.GetValue(config), start) switch
            {
                ({ } name, null, null) => ModelCard.Find(name).Config,
                (null, { } file, null) => HuggingFaceConfig.Read(file),
                (null, null, { } model) => model.Config,
                _ => throw new ArgumentException("give one of --model-shape CARD, --config FILE and --init MODEL"),
            };
            shape = shape with { RopeStyle = RopeStyle.RotateHalf };
            if (parse.GetValue(tokenizerFile) is { } tokenizerPath)
            {
                var tokenizer = Core.Tokenization.ByteLevelBpeTokenizer.LoadHuggingFace(tokenizerPath);
                if (start is not null && tokenizer.VocabSize != shape.VocabSize)
                    throw new ArgumentException($"--tokenizer {tokenizerPath} has {tokenizer.VocabSize} tokens but --init {parse.GetValue(init)} has {shape.VocabSize}");
                shape = shape with { VocabSize = tokenizer.VocabSize, BosTokenId = tokenizer.BosId, EosTokenIds = tokenizer.EosId is int eos ? [eos] : [] };
            }
            var options = new PretrainingOptions
            {
                Steps = parse.GetValue(steps), Sequences = parse.GetValue(batch), Length = parse.GetValue(length), Accumulate = parse.GetValue(accumulate),
                LearningRate = parse.GetValue(learningRate), WarmupSteps = parse.GetValue(warmup), WeightDecay = parse.GetValue(decay), ClipNorm = parse.GetValue(clip),
                Seed = parse.GetValue(seed), Operand = parse.GetValue(operand), RecomputeActivations = parse.GetValue(recompute),
                CheckpointPath = parse.GetValue(checkpoint), CheckpointEvery = parse.GetValue(checkpointEvery),
                InitialModel = start is null ? null : ModelFingerprint.Of(start).ToString(),
            };
            if (options.Length > shape.MaxContextLength) throw new ArgumentException($"--length {options.Length} exceeds the model's context of {shape.MaxContextLength}");
            var corpus = PretrainingData.Read(parse.GetValue(data)!, shape.VocabSize, shape.BosTokenId, shape.EosTokenIds.Count > 0 ? shape.EosTokenIds[0] : null, options.Seed,
                parse.GetValue(examples), parse.GetValue(answerWeight));
            using var gpu = CudaDevice.Open();
            Console.WriteLine($"{gpu.Name}: pretraining {shape.HiddenSize}x{shape.LayerCount} (vocab {shape.VocabSize}) on {corpus.Tokens:N0} tokens in {corpus.Lines:N0} lines, " +
                              $"{options.Steps} steps of {options.Sequences}x{options.Length}x{options.Accumulate} tokens, {options.Operand}");
            int every = Math.Max(1, parse.GetValue(logEvery));
            string? curveFile = parse.GetValue(curve);
            if (curveFile is not null && !File.Exists(curveFile)) File.WriteAllText(curveFile, "step,loss,learning_rate,gradient_norm,tokens_per_s\n");
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
            if (parse.GetValue(timeLimit) > 0) stop.CancelAfter(TimeSpan.FromSeconds(parse.GetValue(timeLimit)));
            int stepsThisRun = 0;
            var result = CudaPretraining.Run(gpu, shape, corpus, options, p =>
            {
                if (++stepsThisRun == parse.GetValue(stopAfter)) stop.Cancel();
                var c = CultureInfo.InvariantCulture;
                if (curveFile is not null) File.AppendAllText(curveFile, string.Create(c, $"{p.Step},{p.Loss:G6},{p.LearningRate:G4},{p.GradientNorm:G4},{p.TokensPerSecond:F0}\n"));
                if (p.Step % every == 0 || p.Step == p.TotalSteps)
                    Console.WriteLine(string.Create(c, $"step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}, lr {p.LearningRate:E2}, |g| {p.GradientNorm:F3}, {p.TokensPerSecond:F0} tokens/s, {p.Elapsed.TotalSeconds:F0} s"));
            }, stop.Token, start is null ? null : TrainingWeights<float>.From(start));
            if (!result.Finished)
                Console.WriteLine($"stopped at step {result.Steps} of {options.Steps}" +
                                  (options.CheckpointPath is null ? " (no --checkpoint: the run cannot resume)" : $"; the same command resumes from {options.CheckpointPath}"));
            string directory = parse.GetValue(output)!;
            TrainedCheckpoint.WriteHuggingFace(shape, result.Weights, directory, parse.GetValue(saveType),
                new Dictionary<string, string> { ["kvpacket.pretrain"] = options.Signature(shape), ["kvpacket.steps"] = $"{result.Steps} of {options.Steps}" },
                parse.GetValue(shard) * 1_000_000L);
            if (parse.GetValue(tokenizerFile) is { } copied) File.Copy(copied, Path.Combine(directory, "tokenizer.json"), overwrite: true);
            Console.WriteLine($"wrote {directory} (after step {result.Steps} of {options.Steps})");
            return Task.FromResult(0);
        });
        return command;
    }
}
