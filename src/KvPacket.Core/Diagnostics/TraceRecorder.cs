using System.Diagnostics;
using System.Text.Json;

namespace KvPacket.Core.Diagnostics;

/// <summary>
/// Records timed spans into a buffer sized once and writes them as a Chrome / Perfetto trace (the Trace Event Format's
/// JSON: complete events, <c>"ph": "X"</c>, microseconds). Recording a span allocates nothing; when the buffer is full
/// further spans are counted as dropped, never grown into. Safe to record from several threads.
/// </summary>
public sealed class TraceRecorder
{
    private readonly Span[] _spans;
    private readonly long _origin = Stopwatch.GetTimestamp();
    private readonly string[] _trackNames;
    private int _count;
    private long _dropped;

    /// <summary>One recorded span: what, which category, on which track (a row in the viewer), when, and up to two named numbers.</summary>
    private readonly record struct Span(string Name, string Category, int Track, long Start, long End, string? Arg1, long Value1, string? Arg2, long Value2);

    /// <summary>A recorder holding up to <paramref name="capacity"/> spans; <paramref name="trackNames"/> name the first tracks.</summary>
    public TraceRecorder(int capacity = 1 << 20, params string[] trackNames)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _spans = new Span[capacity];
        _trackNames = trackNames;
    }

    /// <summary>Spans recorded.</summary>
    public int Count => Math.Min(Volatile.Read(ref _count), _spans.Length);

    /// <summary>Spans that did not fit.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Records a span from <paramref name="start"/> to <paramref name="end"/> (<see cref="Stopwatch.GetTimestamp"/> values).</summary>
    public void Record(string name, string category, int track, long start, long end, string? arg1 = null, long value1 = 0, string? arg2 = null, long value2 = 0)
    {
        int slot = Interlocked.Increment(ref _count) - 1;
        if (slot >= _spans.Length)
        {
            Interlocked.Increment(ref _dropped);
            return;
        }
        _spans[slot] = new Span(name, category, track, start, end, arg1, value1, arg2, value2);
    }

    /// <summary>Writes the trace as Trace Event Format JSON (open it in ui.perfetto.dev or chrome://tracing).</summary>
    public void WriteChromeTrace(Stream destination)
    {
        using var json = new Utf8JsonWriter(destination);
        json.WriteStartObject();
        json.WriteString("displayTimeUnit", "ms");
        json.WriteStartArray("traceEvents");
        for (int track = 0; track < _trackNames.Length; track++)
        {
            json.WriteStartObject();
            json.WriteString("name", "thread_name");
            json.WriteString("ph", "M");
            json.WriteNumber("pid", 1);
            json.WriteNumber("tid", track);
            json.WriteStartObject("args");
            json.WriteString("name", _trackNames[track]);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        double microsecondsPerTick = 1e6 / Stopwatch.Frequency;
        int count = Count;
        for (int i = 0; i < count; i++)
        {
            var span = _spans[i];
            if (span.Name is null) continue; // a slot taken by a writer that has not finished writing it
            json.WriteStartObject();
            json.WriteString("name", span.Name);
            json.WriteString("cat", span.Category);
            json.WriteString("ph", "X");
            json.WriteNumber("ts", Math.Round((span.Start - _origin) * microsecondsPerTick, 3));
            json.WriteNumber("dur", Math.Round(Math.Max(0, span.End - span.Start) * microsecondsPerTick, 3));
            json.WriteNumber("pid", 1);
            json.WriteNumber("tid", span.Track);
            if (span.Arg1 is not null || span.Arg2 is not null)
            {
                json.WriteStartObject("args");
                if (span.Arg1 is not null) json.WriteNumber(span.Arg1, span.Value1);
                if (span.Arg2 is not null) json.WriteNumber(span.Arg2, span.Value2);
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteNumber("droppedSpans", Dropped);
        json.WriteEndObject();
    }

    /// <summary>Writes the trace to <paramref name="path"/>.</summary>
    public void WriteChromeTrace(string path)
    {
        using var file = File.Create(path);
        WriteChromeTrace(file);
    }
}
