using ILGPU.Runtime;

namespace KvPacket.Compute.Ilgpu;

/// <summary>
/// Per-stage device time of queued ILGPU work, the counterpart of <see cref="Cuda.CudaTimeline"/> with the same labels:
/// <see cref="Mark"/> puts a profiling marker on the accelerator's stream and starts a stage, which ends at the next mark
/// (or <see cref="Close"/>); <see cref="Totals"/> waits for the stream and adds each stage's marker-to-marker time under
/// its label. Needs a context with profiling on (<see cref="IlgpuDevice.Open"/> turns it on).
/// </summary>
public sealed class IlgpuTimeline(Accelerator accelerator) : IDisposable
{
    private readonly List<(string Label, ProfilingMarker Marker)> _marks = [];

    /// <summary>Starts stage <paramref name="label"/> (ending the previous one).</summary>
    public void Mark(string label) => _marks.Add((label, accelerator.DefaultStream.AddProfilingMarker()));

    /// <summary>Ends the last stage.</summary>
    public void Close() => Mark("");

    /// <summary>Milliseconds per label over every closed stage since the last call.</summary>
    public Dictionary<string, double> Totals()
    {
        var totals = new Dictionary<string, double>();
        if (_marks.Count == 0) return totals;
        _marks[^1].Marker.Synchronize();
        for (int i = 0; i + 1 < _marks.Count; i++)
            if (_marks[i].Label.Length > 0)
                totals[_marks[i].Label] = totals.GetValueOrDefault(_marks[i].Label) + _marks[i + 1].Marker.MeasureFrom(_marks[i].Marker).TotalMilliseconds;
        Dispose();
        return totals;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var (_, marker) in _marks) marker.Dispose();
        _marks.Clear();
    }
}
