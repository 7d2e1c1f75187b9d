using System.Diagnostics;
using System.Globalization;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Rag;

namespace KvPacket.Training.Cuda;

/// <summary>Settings of a KVLink fine-tuning run (the whole model and its link tokens).</summary>
public sealed record FineTuningOptions
{
    /// <summary>Link tokens after each document.</summary>
    public int Links { get; init; } = 5;
    /// <summary>Optimiser steps.</summary>
    public int Steps { get; init; } = 300;
    /// <summary>Examples per step.</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Peak learning rate (warm-up, then cosine to 10%).</summary>
    public double LearningRate { get; init; } = 1e-4;
    /// <summary>Warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 20;
    /// <summary>AdamW decoupled weight decay (matrices).</summary>
    public double WeightDecay { get; init; }
    /// <summary>Gradient-norm clipping.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>The share of examples trained with full attention over the plain concatenation (the rest as KVLink students).</summary>
    public double FullFraction { get; init; } = 0.5;
    /// <summary>Seed of the example order and the full/KVLink choice.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Matrix operands: BF16 or F32.</summary>
    public DType Operand { get; init; } = DType.BF16;
    /// <summary>Recompute each layer in the backward pass.</summary>
    public bool RecomputeActivations { get; init; }
    /// <summary>Steps between held-out evaluations and checkpoints.</summary>
    public int EvaluateEvery { get; init; } = 50;
    /// <summary>Checkpoint file (resumed from when it exists).</summary>
    public string? CheckpointPath { get; init; }
    /// <summary>Wall-clock budget: once spent, the run evaluates, checkpoints and returns what it has (null: none).</summary>
    public TimeSpan? TimeLimit { get; init; }
    /// <summary>Ends the run after this step as a spent <see cref="TimeLimit"/> would, the schedule still spanning
    /// <see cref="Steps"/> — so a run that a time limit cut short can be repeated exactly (null: none).</summary>
    public int? StopAfter { get; init; }

    /// <summary>What a checkpoint must match to be resumed.</summary>
    public string Signature(string model) => string.Create(CultureInfo.InvariantCulture,
        $"kvlink fine-tune of {model}, links {Links}, steps {Steps}, batch {BatchSize}, lr {LearningRate}, warm-up {WarmupSteps}, decay {WeightDecay}, clip {ClipNorm}, full {FullFraction}, seed {Seed}, {Operand}");
}

/// <summary>Where a fine-tuning run ended: held-out next-token losses (mean per scored row) before and after, in both layouts.</summary>
public sealed record FineTuningRun(TrainingWeights<float> Weights, float[] Links, double InitialKvLinkLoss, double KvLinkLoss, double InitialFullLoss, double FullLoss,
    int Steps, TimeSpan Elapsed);

/// <summary>One step's figures.</summary>
public readonly record struct FineTuningProgress(int Step, int TotalSteps, double Loss, double LearningRate, double KvLinkLoss, double FullLoss, TimeSpan Elapsed);

/// <summary>
/// KVLink's fine-tuning on the GPU: every weight and the link tokens trained together on mixed data — some examples with
/// full attention over the plain concatenation, the rest with the documents encoded separately (each sees only itself)
/// and link tokens after each that see everything before them — so the model learns to read separately encoded
/// documents without forgetting how to read plain text. Next-token cross-entropy on the continuation.
/// </summary>
public static class CudaKvLinkFineTuning
{
    /// <summary>Fine-tunes <paramref name="weights"/> of <paramref name="config"/>; <paramref name="model"/> names it in the checkpoint signature.</summary>
    public static FineTuningRun Run(CudaDevice device, ModelConfig config, TrainingWeights<float> weights, string model,
        IReadOnlyList<FineTuningExample> train, IReadOnlyList<FineTuningExample> heldOut, FineTuningOptions options,
        Action<FineTuningProgress>? progress = null, CancellationToken cancellation = default)
    {
        if (train.Count == 0 || heldOut.Count == 0) throw new ArgumentException("fine-tuning needs training and held-out examples");
        int hidden = config.HiddenSize, longest = train.Concat(heldOut).Max(e => e.Sequence(RagMode.KvLink, options.Links).Source.Length);
        var links = new float[options.Links * hidden];
        for (int v = 0; v < config.VocabSize; v++)
            for (int j = 0; j < hidden; j++)
                for (int l = 0; l < options.Links; l++) links[l * hidden + j] += weights.Embedding[v * hidden + j] / config.VocabSize;
        using var gpu = new CudaTrainingModel(device, config, weights, new CudaTrainingOptions(options.Operand, TrainWeights: true, options.RecomputeActivations),
            options.BatchSize, longest, options.Links, links);
        string signature = options.Signature(model);
        int step = 0;
        double initialKvLink, initialFull;
        if (options.CheckpointPath is { } path && gpu.Resume(path, signature) is { } saved)
            (step, initialKvLink, initialFull) = (saved.Step, saved.InitialHeldOutKl, saved.BestHeldOutKl);
        else (initialKvLink, initialFull) = (HeldOut(gpu, heldOut, RagMode.KvLink, options), HeldOut(gpu, heldOut, RagMode.Full, options));
        double kvLink = initialKvLink, full = initialFull;
        var clock = Stopwatch.StartNew();
        while (step < options.Steps && !cancellation.IsCancellationRequested)
        {
            var sequences = new TrainingSequence[options.BatchSize];
            for (int b = 0; b < sequences.Length; b++)
            {
                var random = SeededRandom.ForSlot(options.Seed, step, b);
                var example = train[(int)(random.NextUInt64() % (ulong)train.Count)];
                var mode = random.NextDouble() < options.FullFraction ? RagMode.Full : RagMode.KvLink;
                sequences[b] = example.Sequence(mode, options.Links);
            }
            var batch = TrainingBatch.Of(sequences);
            double loss = gpu.ForwardBackward(batch, 1.0 / sequences.Length);
            double rate = AdamW.Schedule(step, options.Steps, options.WarmupSteps, options.LearningRate);
            gpu.Step(rate, options.ClipNorm, options.WeightDecay);
            step++;
            bool outOfTime = clock.Elapsed >= options.TimeLimit || step == options.StopAfter;
            if (step % options.EvaluateEvery == 0 || step == options.Steps || outOfTime)
            {
                (kvLink, full) = (HeldOut(gpu, heldOut, RagMode.KvLink, options), HeldOut(gpu, heldOut, RagMode.Full, options));
                if (options.CheckpointPath is { } checkpointPath) gpu.SaveCheckpoint(checkpointPath, signature, step, initialKvLink, initialFull);
            }
            progress?.Invoke(new FineTuningProgress(step, options.Steps, loss, rate, kvLink, full, clock.Elapsed));
            if (outOfTime) break;
        }
        return new FineTuningRun(gpu.DownloadWeights(), gpu.DownloadSoft(), initialKvLink, kvLink, initialFull, full, step, clock.Elapsed);
    }

    /// <summary>Mean next-token loss per scored row over <paramref name="examples"/> in <paramref name="mode"/>.</summary>
    private static double HeldOut(CudaTrainingModel gpu, IReadOnlyList<FineTuningExample> examples, RagMode mode, FineTuningOptions options)
    {
        double total = 0;
        for (int first = 0; first < examples.Count; first += options.BatchSize)
            total += gpu.Loss(TrainingBatch.Of([.. examples.Skip(first).Take(options.BatchSize).Select(e => e.Sequence(mode, options.Links))]), 1.0);
        return total / examples.Count;
    }
}
