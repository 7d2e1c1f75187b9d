using System.Globalization;
using System.Security;
using System.Text;
using System.Text.Json;

namespace KvPacket.Core.Diagnostics;

/// <summary>
/// A trace written by <see cref="TraceRecorder"/> (Trace Event Format) drawn as an SVG timeline, the way a trace viewer
/// shows it: a row per track (named by its <c>thread_name</c> record), a bar per span coloured by its name, a time axis
/// in milliseconds, and a legend. For a picture of a profiling run where no trace viewer runs (a CI log, a README).
/// </summary>
public static class TraceTimeline
{
    private const double Width = 1400, Left = 150, Right = 20, Top = 40, RowHeight = 18, AxisHeight = 30, LegendHeight = 24;
    // Twenty: a GPU step's stages and the request spans together take more than ten names.
    private static readonly string[] Colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22",
        "#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#9edae5", "#dbdb8d"];

    /// <summary>One span of the trace: its row, name, start and length in microseconds.</summary>
    public readonly record struct Bar(int Track, string Name, double Start, double Duration);

    /// <summary>
    /// Reads <paramref name="trace"/> and writes the spans that overlap [<paramref name="fromMs"/>, <paramref name="toMs"/>)
    /// (the whole trace when <paramref name="toMs"/> is null) on the first <paramref name="maxRows"/> tracks with spans there,
    /// in track order, to <paramref name="svg"/>. Returns the bars drawn.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not a trace, or the window holds no span.</exception>
    public static IReadOnlyList<Bar> Write(Stream trace, TextWriter svg, double fromMs = 0, double? toMs = null, int maxRows = 24, string? title = null)
    {
        var (names, bars) = Read(trace);
        double from = fromMs * 1e3, to = (toMs ?? bars.Max(b => b.Start + b.Duration) / 1e3) * 1e3;
        if (to <= from) throw new InvalidDataException($"The window [{fromMs} ms, {to / 1e3} ms) is empty.");
        var inWindow = bars.Where(b => b.Start < to && b.Start + b.Duration > from).ToList();
        var rows = inWindow.Select(b => b.Track).Distinct().Order().Take(maxRows).ToList();
        var shown = inWindow.Where(b => rows.Contains(b.Track)).ToList();
        if (shown.Count == 0) throw new InvalidDataException($"No span of the trace falls in [{fromMs} ms, {to / 1e3} ms).");
        var labels = shown.Select(b => b.Name).Distinct().Order(StringComparer.Ordinal).ToList();

        var c = CultureInfo.InvariantCulture;
        double plotWidth = Width - Left - Right, height = Top + rows.Count * RowHeight + AxisHeight + LegendHeight * ((labels.Count + 5) / 6) + 10;
        double X(double microseconds) => Left + (Math.Clamp(microseconds, from, to) - from) / (to - from) * plotWidth;
        var text = new StringBuilder();
        text.Append(c, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{height:F0}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        text.Append(c, $"<rect width=\"{Width}\" height=\"{height:F0}\" fill=\"white\"/>\n");
        text.Append(c, $"<text x=\"{Width / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{Escape(title ?? "trace")} — {from / 1e3:F1} to {to / 1e3:F1} ms, {shown.Count} spans</text>\n");
        for (int r = 0; r < rows.Count; r++)
        {
            double y = Top + r * RowHeight;
            if (r % 2 == 1) text.Append(c, $"<rect x=\"{Left}\" y=\"{y}\" width=\"{plotWidth}\" height=\"{RowHeight}\" fill=\"#f4f4f4\"/>\n");
            string name = names.TryGetValue(rows[r], out string? known) ? known : $"request {rows[r] - TraceTracks.FirstRequest}";
            text.Append(c, $"<text x=\"{Left - 6}\" y=\"{y + RowHeight - 5}\" text-anchor=\"end\">{Escape(name)}</text>\n");
        }
        foreach (var bar in shown)
        {
            double x0 = X(bar.Start), x1 = Math.Max(X(bar.Start + bar.Duration), x0 + 0.5), y = Top + rows.IndexOf(bar.Track) * RowHeight + 2;
            string colour = Colours[labels.IndexOf(bar.Name) % Colours.Length];
            text.Append(c, $"<rect x=\"{x0:F2}\" y=\"{y}\" width=\"{x1 - x0:F2}\" height=\"{RowHeight - 4}\" fill=\"{colour}\"><title>{Escape(bar.Name)} {bar.Duration / 1e3:F3} ms</title></rect>\n");
        }
        double axis = Top + rows.Count * RowHeight;
        text.Append(c, $"<line x1=\"{Left}\" y1=\"{axis}\" x2=\"{Left + plotWidth}\" y2=\"{axis}\" stroke=\"#444\"/>\n");
        double step = Tick((to - from) / 1e3 / 10);
        for (double t = Math.Ceiling(from / 1e3 / step) * step; t * 1e3 <= to; t += step)
        {
            double x = X(t * 1e3);
            text.Append(c, $"<line x1=\"{x:F1}\" y1=\"{axis}\" x2=\"{x:F1}\" y2=\"{axis + 5}\" stroke=\"#444\"/>\n");
            text.Append(c, $"<text x=\"{x:F1}\" y=\"{axis + 17}\" text-anchor=\"middle\">{t.ToString("0.###", c)} ms</text>\n");
        }
        for (int i = 0; i < labels.Count; i++)
        {
            double x = Left + i % 6 * (plotWidth / 6), y = axis + AxisHeight + i / 6 * LegendHeight;
            text.Append(c, $"<rect x=\"{x:F1}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{Colours[i % Colours.Length]}\"/>\n");
            text.Append(c, $"<text x=\"{x + 16:F1}\" y=\"{y + 10}\">{Escape(labels[i])}</text>\n");
        }
        text.Append("</svg>\n");
        svg.Write(text.ToString());
        return shown;
    }

    /// <summary>The track names and the complete ("X") spans of a Trace Event Format file.</summary>
    private static (Dictionary<int, string> Names, List<Bar> Bars) Read(Stream trace)
    {
        JsonDocument document;
        try { document = JsonDocument.Parse(trace); }
        catch (JsonException e) { throw new InvalidDataException($"The trace is not JSON: {e.Message}", e); }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object || !document.RootElement.TryGetProperty("traceEvents", out var events) || events.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException("The file is not a trace: it has no traceEvents array.");
            var names = new Dictionary<int, string>();
            var bars = new List<Bar>();
            foreach (var e in events.EnumerateArray())
            {
                string? phase = e.TryGetProperty("ph", out var ph) ? ph.GetString() : null;
                int track = e.TryGetProperty("tid", out var tid) && tid.TryGetInt32(out int t) ? t : 0;
                if (phase == "M" && e.TryGetProperty("args", out var args) && args.TryGetProperty("name", out var name)) names[track] = name.GetString() ?? "";
                else if (phase == "X" && e.TryGetProperty("ts", out var ts) && e.TryGetProperty("dur", out var dur))
                    bars.Add(new Bar(track, e.TryGetProperty("name", out var n) ? n.GetString() ?? "" : "", ts.GetDouble(), dur.GetDouble()));
            }
            if (bars.Count == 0) throw new InvalidDataException("The trace holds no complete (\"X\") spans.");
            return (names, bars);
        }
    }

    /// <summary>A round tick spacing (1, 2 or 5 × 10ⁿ) near <paramref name="rough"/>.</summary>
    private static double Tick(double rough)
    {
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(rough)));
        double fraction = rough / magnitude;
        return (fraction < 1.5 ? 1 : fraction < 3.5 ? 2 : fraction < 7.5 ? 5 : 10) * magnitude;
    }

    private static string Escape(string text) => SecurityElement.Escape(text) ?? "";
}
