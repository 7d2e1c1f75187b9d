using KvPacket.Engine.Rag;

namespace KvPacket.Training;

/// <summary>Settings of an adapter distillation run (KV Packet header/trailer, or KVLink link tokens).</summary>
public sealed record DistillationOptions
{
    /// <summary>What is trained: <see cref="RagMode.KvPacket"/> (header and trailer) or <see cref="RagMode.KvLink"/> (links).</summary>
    public RagMode Mode { get; init; } = RagMode.KvPacket;
    /// <summary>Header soft tokens (KV Packet).</summary>
    public int Header { get; init; } = 4;
    /// <summary>Trailer soft tokens (KV Packet).</summary>
    public int Trailer { get; init; } = 4;
    /// <summary>Link tokens after each document (KVLink).</summary>
    public int Links { get; init; } = 5;
    /// <summary>Optimiser steps.</summary>
    public int Steps { get; init; } = 300;
    /// <summary>Examples per step (their gradients averaged; computed in parallel).</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 0.03;
    /// <summary>Linear warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 15;
    /// <summary>Gradient L2 norm limit.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Seed of the example order.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Adapter name.</summary>
    public string Name { get; init; } = "kvpacket";
    /// <summary>Steps between held-out evaluations (and checkpoints).</summary>
    public int EvaluateEvery { get; init; } = 25;
    /// <summary>Stop after this many evaluations without a better held-out KL (0: never stop early).</summary>
    public int Patience { get; init; } = 4;
    /// <summary>Recompute each layer's activations in the backward pass instead of keeping them (less memory, ~⅓ more compute).</summary>
    public bool RecomputeActivations { get; init; }
    /// <summary>Examples computed at once (0: one per processor).</summary>
    public int Threads { get; init; }
    /// <summary>Where the students run: the CPU (the reference) or the GPU (<see cref="Cuda.CudaTrainingModel"/>; the optimiser stays on the host, so both give the same kind of run and checkpoint).</summary>
    public TrainingDevice Device { get; init; } = TrainingDevice.Cpu;
    /// <summary>On the GPU: the matrix operands, F32 (as the CPU) or BF16 (f32 accumulation).</summary>
    public Core.Memory.DType Operand { get; init; } = Core.Memory.DType.F32;
    /// <summary>A file the run state is saved to at every evaluation and resumed from when it exists (null: none).</summary>
    public string? CheckpointPath { get; init; }

    /// <summary>Soft rows the adapter has: header + trailer, or links.</summary>
    public int AdapterRows => Mode == RagMode.KvLink ? Links : Header + Trailer;

    /// <summary>Throws when the settings cannot run, naming the setting.</summary>
    public void Validate()
    {
        if (Mode is not (RagMode.KvPacket or RagMode.KvLink)) throw new ArgumentException($"Mode: adapters are trained for kvpacket or kvlink, not {Mode}.");
        if (Header < 0 || Trailer < 0 || Links < 0) throw new ArgumentException("Header, Trailer and Links must not be negative.");
        if (AdapterRows == 0) throw new ArgumentException(Mode == RagMode.KvLink ? "Links: KVLink needs at least one link token." : "Header + Trailer: KV Packet needs at least one soft token.");
        if (Steps < 1 || BatchSize < 1 || EvaluateEvery < 1) throw new ArgumentException("Steps, BatchSize and EvaluateEvery must be at least 1.");
        if (!(LearningRate > 0) || !(ClipNorm > 0)) throw new ArgumentException("LearningRate and ClipNorm must be positive.");
        if (WarmupSteps < 0 || Patience < 0 || Threads < 0) throw new ArgumentException("WarmupSteps, Patience and Threads must not be negative.");
        if (Operand is not (Core.Memory.DType.F32 or Core.Memory.DType.BF16)) throw new ArgumentException($"Operand: F32 or BF16, not {Operand}.");
    }
}

/// <summary>Where training computes.</summary>
public enum TrainingDevice
{
    /// <summary>The CPU engine (the reference).</summary>
    Cpu,
    /// <summary>An NVIDIA GPU through CUDA.</summary>
    Cuda,
}

/// <summary>Where a run is, reported after every step.</summary>
/// <param name="Step">Steps done.</param>
/// <param name="TotalSteps">Steps planned.</param>
/// <param name="Loss">This step's mean training KL per continuation row.</param>
/// <param name="LearningRate">This step's learning rate.</param>
/// <param name="HeldOutKl">The latest held-out KL.</param>
/// <param name="BestHeldOutKl">The best held-out KL so far.</param>
/// <param name="Elapsed">Time since the run (or its resumption) began.</param>
public readonly record struct DistillationProgress(int Step, int TotalSteps, double Loss, double LearningRate, double HeldOutKl, double BestHeldOutKl, TimeSpan Elapsed);

/// <summary>The outcome of a distillation run.</summary>
/// <param name="Adapter">The adapter at its best held-out evaluation (version 1).</param>
/// <param name="InitialHeldOutKl">Held-out KL at initialisation.</param>
/// <param name="BestHeldOutKl">Held-out KL of <paramref name="Adapter"/>.</param>
/// <param name="BestStep">The step <paramref name="Adapter"/> comes from.</param>
/// <param name="StepsRun">Steps done (fewer than planned when stopped early).</param>
/// <param name="StoppedEarly">True when held-out KL stopped improving before the last step.</param>
/// <param name="Examples">Training examples run forward and backward in this process.</param>
/// <param name="Rows">Sequence rows run forward and backward in this process.</param>
/// <param name="Elapsed">Wall time of the steps (evaluations included) in this process.</param>
public sealed record DistillationRun(Engine.Rag.Adapter Adapter, double InitialHeldOutKl, double BestHeldOutKl, int BestStep, int StepsRun, bool StoppedEarly,
    long Examples, long Rows, TimeSpan Elapsed)
{
    /// <summary>Training examples per second.</summary>
    public double ExamplesPerSecond => Examples / Elapsed.TotalSeconds;
    /// <summary>Sequence rows (tokens and soft tokens) per second, forward and backward.</summary>
    public double RowsPerSecond => Rows / Elapsed.TotalSeconds;
}
