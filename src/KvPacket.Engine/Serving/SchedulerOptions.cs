namespace KvPacket.Engine.Serving;

/// <summary>How the <see cref="Scheduler"/> batches.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Most tokens per step, decode tokens and prefill chunks together (the model's batch size when 0).</summary>
    public int TokenBudget { get; init; }

    /// <summary>Most requests running at once (the model's batch sequences when 0).</summary>
    public int MaxRunning { get; init; }

    /// <summary>Most requests waiting for admission; beyond that, <see cref="Scheduler.TrySubmit"/> refuses (a server answers 429).</summary>
    public int MaxWaiting { get; init; } = 256;
}
