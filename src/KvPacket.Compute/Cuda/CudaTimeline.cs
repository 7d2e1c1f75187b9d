namespace KvPacket.Compute.Cuda;

/// <summary>
/// Per-stage GPU time of queued work: <see cref="Mark"/> records an event on the device's stream and starts a stage;
/// the stage ends at the next mark (or <see cref="Close"/>). <see cref="Totals"/> waits for the stream and adds each
/// stage's event-to-event milliseconds under its label. For profiling eager steps only (events cannot go into a captured
/// graph), so the figures include the small gaps between launches that graph replay removes.
/// </summary>
public sealed class CudaTimeline(CudaDevice device) : IDisposable
{
    private readonly List<(string Label, nint Event)> _marks = [];
    private readonly Stack<nint> _free = new();

    /// <summary>Starts stage <paramref name="label"/> (ending the previous one).</summary>
    public void Mark(string label)
    {
        if (!_free.TryPop(out nint e)) CudaDriver.Check(CudaDriver.cuEventCreate(out e, 0), "cuEventCreate");
        CudaDriver.Check(CudaDriver.cuEventRecord(e, device.Stream), "cuEventRecord");
        _marks.Add((label, e));
    }

    /// <summary>Ends the last stage.</summary>
    public void Close() => Mark("");

    /// <summary>Milliseconds per label over every closed stage since the last call; the events are reused.</summary>
    public Dictionary<string, double> Totals()
    {
        var totals = new Dictionary<string, double>();
        if (_marks.Count == 0) return totals;
        CudaDriver.Check(CudaDriver.cuEventSynchronize(_marks[^1].Event), "cuEventSynchronize");
        for (int i = 0; i + 1 < _marks.Count; i++)
        {
            if (_marks[i].Label.Length == 0) continue;
            CudaDriver.Check(CudaDriver.cuEventElapsedTime(out float ms, _marks[i].Event, _marks[i + 1].Event), "cuEventElapsedTime");
            totals[_marks[i].Label] = totals.GetValueOrDefault(_marks[i].Label) + ms;
        }
        foreach (var (_, e) in _marks) _free.Push(e);
        _marks.Clear();
        return totals;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var (_, e) in _marks) CudaDriver.cuEventDestroy(e);
        foreach (nint e in _free) CudaDriver.cuEventDestroy(e);
        _marks.Clear();
        _free.Clear();
    }
}
