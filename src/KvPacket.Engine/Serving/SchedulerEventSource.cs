using System.Diagnostics.Tracing;

namespace KvPacket.Engine.Serving;

/// <summary>
/// The scheduler's counters as an <see cref="EventSource"/> named <c>KvPacket.Scheduler</c>, so
/// <c>dotnet-counters monitor -n kvpacketd --counters KvPacket.Scheduler</c> shows them live: requests running and
/// waiting, the last step's batch size, steps and preemptions per second. It watches the most recently created scheduler.
/// </summary>
[EventSource(Name = "KvPacket.Scheduler")]
public sealed class SchedulerEventSource : EventSource
{
    /// <summary>The one instance.</summary>
    public static readonly SchedulerEventSource Log = new();

    private Scheduler? _scheduler;
    private DiagnosticCounter[]? _counters;

    private SchedulerEventSource() { }

    /// <summary>Makes <paramref name="scheduler"/> the one whose counters are reported.</summary>
    [NonEvent]
    internal void Watch(Scheduler scheduler) => _scheduler = scheduler;

    /// <inheritdoc/>
    protected override void OnEventCommand(EventCommandEventArgs command)
    {
        // Counters exist only once a listener asks for them: no cost while nobody watches.
        if (command.Command != EventCommand.Enable || _counters is not null) return;
        _counters =
        [
            new PollingCounter("requests-running", this, () => _scheduler?.RunningCount ?? 0) { DisplayName = "Requests running" },
            new PollingCounter("requests-waiting", this, () => _scheduler?.WaitingCount ?? 0) { DisplayName = "Requests waiting" },
            new PollingCounter("batch-size", this, () => _scheduler?.LastBatchSize ?? 0) { DisplayName = "Requests in the last step" },
            new IncrementingPollingCounter("steps", this, () => _scheduler?.Steps ?? 0) { DisplayName = "Steps", DisplayRateTimeScale = TimeSpan.FromSeconds(1) },
            new IncrementingPollingCounter("preemptions", this, () => _scheduler?.Preemptions ?? 0) { DisplayName = "Preemptions", DisplayRateTimeScale = TimeSpan.FromSeconds(1) },
        ];
    }
}
