using System.Diagnostics;
using System.Globalization;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Training.Cuda;

/// <summary>Settings of a full-parameter training run on the GPU.</summary>
public sealed record PretrainingOptions
{
    /// <summary>Optimiser steps.</summary>
    public int Steps { get; init; } = 1000;
    /// <summary>Sequences per micro-batch.</summary>
    public int Sequences { get; init; } = 16;
    /// <summary>Tokens per sequence.</summary>
    public int Length { get; init; } = 1024;
    /// <summary>Micro-batches whose gradients are summed per step.</summary>
    public int Accumulate { get; init; } = 1;
    /// <summary>Peak learning rate (linear warm-up, cosine decay to 10%).</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>Warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 100;
    /// <summary>AdamW's decoupled weight decay (matrices only).</summary>
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Gradient-norm clipping (0: none).</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Seed of the initial weights and the data order.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Matrix operands: BF16 (f32 accumulation) or F32.</summary>
    public DType Operand { get; init; } = DType.BF16;
    /// <summary>Recompute each layer's activations in the backward pass.</summary>
    public bool RecomputeActivations { get; init; }
    /// <summary>Checkpoint file (resumed from when it exists).</summary>
    public string? CheckpointPath { get; init; }
    /// <summary>Steps between checkpoints.</summary>
    public int CheckpointEvery { get; init; } = 200;
    /// <summary>Fingerprint of the model a continued run starts from (null: seeded random weights).</summary>
    public string? InitialModel { get; init; }

    /// <summary>What a checkpoint must match to be resumed.</summary>
    public string Signature(ModelConfig config) => string.Create(CultureInfo.InvariantCulture,
        $"pretrain {config.HiddenSize}x{config.LayerCount} heads {config.HeadCount}/{config.KvHeadCount}x{config.HeadDim} ffn {config.IntermediateSize} vocab {config.VocabSize}, " +
        $"steps {Steps}, batch {Sequences}x{Length}x{Accumulate}, lr {LearningRate}, warm-up {WarmupSteps}, decay {WeightDecay}, clip {ClipNorm}, seed {Seed}, {Operand}") +
        (InitialModel is null ? "" : $", from {InitialModel}");
}

/// <summary>Where a run stopped: the weights, the steps done, and whether that is all of them.</summary>
public sealed record PretrainingResult(TrainingWeights<float> Weights, int Steps, bool Finished);

/// <summary>One step's figures.</summary>
public readonly record struct PretrainingProgress(int Step, int TotalSteps, double Loss, double LearningRate, double GradientNorm, double TokensPerSecond, TimeSpan Elapsed);

/// <summary>
/// Full-parameter training on the GPU (pre-training from scratch, or continued from a model): seeded initial weights or
/// the given ones, seeded windows of a token corpus, AdamW with warm-up + cosine, gradient accumulation and clipping,
/// checkpoints in the CPU trainer's format (<see cref="TrainingCheckpoint"/>) from which a run resumes exactly where it stopped.
/// </summary>
public static class CudaPretraining
{
    /// <summary>
    /// Trains (or resumes) until the last step or cancellation, and returns the weights where it stopped. It starts from
    /// <paramref name="initial"/> when given (continued pre-training: name its model in <see cref="PretrainingOptions.InitialModel"/>),
    /// else from seeded random weights.
    /// </summary>
    public static PretrainingResult Run(CudaDevice device, ModelConfig config, PretrainingData data, PretrainingOptions options,
        Action<PretrainingProgress>? progress = null, CancellationToken cancellation = default, TrainingWeights<float>? initial = null)
    {
        if ((initial is null) != (options.InitialModel is null))
            throw new ArgumentException("initial weights and PretrainingOptions.InitialModel go together: a resumed run must know what it started from");
        string signature = options.Signature(config);
        using var model = new CudaTrainingModel(device, config, initial ?? WeightInitialisation.Random(config, options.Seed),
            new CudaTrainingOptions(options.Operand, TrainWeights: true, options.RecomputeActivations), options.Sequences, options.Length);
        int step = options.CheckpointPath is { } path ? model.Resume(path, signature)?.Step ?? 0 : 0;
        var clock = Stopwatch.StartNew();
        long tokensPerStep = (long)options.Sequences * options.Length * options.Accumulate;
        while (step < options.Steps && !cancellation.IsCancellationRequested)
        {
            long started = Stopwatch.GetTimestamp();
            double loss = 0;
            for (int micro = 0; micro < options.Accumulate; micro++)
            {
                var batch = data.Batch((long)step * options.Accumulate + micro, options.Sequences, options.Length);
                loss += model.ForwardBackward(batch, 1.0 / (batch.TotalWeight * options.Accumulate));
            }
            double rate = AdamW.Schedule(step, options.Steps, options.WarmupSteps, options.LearningRate);
            double norm = model.Step(rate, options.ClipNorm, options.WeightDecay);
            step++;
            if (options.CheckpointPath is { } checkpointPath && (step % options.CheckpointEvery == 0 || step == options.Steps))
                model.SaveCheckpoint(checkpointPath, signature, step, loss, loss);
            double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
            progress?.Invoke(new PretrainingProgress(step, options.Steps, loss, rate, norm, tokensPerStep / seconds, clock.Elapsed));
        }
        if (step < options.Steps && options.CheckpointPath is { } stopPath && step % options.CheckpointEvery != 0)
        {
            // Stopped early (a time limit, or cancelled): keep the progress, so the same command resumes here.
            model.SaveCheckpoint(stopPath, signature, step);
        }
        return new PretrainingResult(model.DownloadWeights(), step, step == options.Steps);
    }
}
