using System.Globalization;
using System.Text;

namespace KvPacket.Cli.Plots;

/// <summary>One series of a chart: points, drawn as a line or as labelled markers.</summary>
/// <param name="Name">Legend text.</param>
/// <param name="Points">(x, y) pairs.</param>
/// <param name="Line">A polyline through the points rather than markers.</param>
/// <param name="Labels">Per point, text written beside its marker (markers only).</param>
internal sealed record ChartSeries(string Name, IReadOnlyList<(double X, double Y)> Points, bool Line = false, IReadOnlyList<string>? Labels = null);

/// <summary>
/// A plain SVG chart — axes with round-number ticks (linear, or logarithmic in x), a title and series — written without
/// any plotting package, so the commands that measure can draw what they measured.
/// </summary>
internal sealed class SvgChart(string title, string xLabel, string yLabel)
{
    private const double Width = 760, Height = 460, Left = 70, Right = 180, Top = 40, Bottom = 55;
    private static readonly string[] Colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"];
    private readonly List<ChartSeries> _series = [];

    /// <summary>A logarithmic x axis (all x must be positive).</summary>
    public bool LogX { get; init; }

    /// <summary>Fixed y range, or null to fit the data.</summary>
    public (double Min, double Max)? YRange { get; init; }

    /// <summary>Adds a series.</summary>
    public SvgChart Add(ChartSeries series)
    {
        _series.Add(series);
        return this;
    }

    /// <summary>Writes the chart to <paramref name="path"/>.</summary>
    public void Write(string path)
    {
        var points = _series.SelectMany(s => s.Points).ToList();
        if (points.Count == 0) throw new InvalidOperationException($"chart '{title}' has no points");
        if (LogX && points.Any(p => p.X <= 0)) throw new InvalidOperationException($"chart '{title}': a logarithmic x axis needs positive x");
        double Fx(double x) => LogX ? Math.Log10(x) : x;
        var (x0, x1) = Padded(points.Min(p => Fx(p.X)), points.Max(p => Fx(p.X)));
        var (y0, y1) = YRange ?? Padded(points.Min(p => p.Y), points.Max(p => p.Y));
        double plotW = Width - Left - Right, plotH = Height - Top - Bottom;
        double Px(double x) => Left + (Fx(x) - x0) / (x1 - x0) * plotW;
        double Py(double y) => Top + (1 - (y - y0) / (y1 - y0)) * plotH;
        var c = CultureInfo.InvariantCulture;
        var svg = new StringBuilder();
        svg.Append(c, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        svg.Append(c, $"<rect width=\"{Width}\" height=\"{Height}\" fill=\"white\"/>\n");
        svg.Append(c, $"<text x=\"{Width / 2}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{Escape(title)}</text>\n");
        svg.Append(c, $"<rect x=\"{Left}\" y=\"{Top}\" width=\"{plotW}\" height=\"{plotH}\" fill=\"none\" stroke=\"#444\"/>\n");
        foreach (double t in LogX ? LogTicks(x0, x1) : Ticks(x0, x1))
        {
            double x = LogX ? Math.Pow(10, t) : t, px = Px(x);
            svg.Append(c, $"<line x1=\"{px:F1}\" y1=\"{Top}\" x2=\"{px:F1}\" y2=\"{Top + plotH}\" stroke=\"#ddd\"/>\n");
            svg.Append(c, $"<text x=\"{px:F1}\" y=\"{Top + plotH + 16}\" text-anchor=\"middle\">{Format(x)}</text>\n");
        }
        foreach (double y in Ticks(y0, y1))
        {
            double py = Py(y);
            svg.Append(c, $"<line x1=\"{Left}\" y1=\"{py:F1}\" x2=\"{Left + plotW}\" y2=\"{py:F1}\" stroke=\"#ddd\"/>\n");
            svg.Append(c, $"<text x=\"{Left - 6}\" y=\"{py + 4:F1}\" text-anchor=\"end\">{Format(y)}</text>\n");
        }
        svg.Append(c, $"<text x=\"{Left + plotW / 2}\" y=\"{Height - 14}\" text-anchor=\"middle\">{Escape(xLabel)}</text>\n");
        svg.Append(c, $"<text transform=\"translate(18 {Top + plotH / 2}) rotate(-90)\" text-anchor=\"middle\">{Escape(yLabel)}</text>\n");
        for (int s = 0; s < _series.Count; s++)
        {
            var series = _series[s];
            string colour = Colours[s % Colours.Length];
            if (series.Line)
                svg.Append(c, $"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.2\" points=\"{string.Join(' ', series.Points.Select(p => string.Create(c, $"{Px(p.X):F1},{Py(p.Y):F1}")))}\"/>\n");
            else
                for (int i = 0; i < series.Points.Count; i++)
                {
                    var (x, y) = series.Points[i];
                    svg.Append(c, $"<circle cx=\"{Px(x):F1}\" cy=\"{Py(y):F1}\" r=\"5\" fill=\"{colour}\"/>\n");
                    if (series.Labels?[i] is { Length: > 0 } label)
                        svg.Append(c, $"<text x=\"{Px(x) + 7:F1}\" y=\"{Py(y) - 6:F1}\" fill=\"{colour}\">{Escape(label)}</text>\n");
                }
            double ly = Top + 10 + 18 * s;
            svg.Append(c, $"<rect x=\"{Width - Right + 12}\" y=\"{ly - 9}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\n");
            svg.Append(c, $"<text x=\"{Width - Right + 30}\" y=\"{ly + 1}\">{Escape(series.Name)}</text>\n");
        }
        svg.Append("</svg>\n");
        File.WriteAllText(path, svg.ToString());
    }

    private static (double, double) Padded(double min, double max)
    {
        double span = max - min;
        if (span <= 0) span = Math.Max(Math.Abs(max), 1) * 0.1;
        return (min - span * 0.05, max + span * 0.05);
    }

    /// <summary>Five to ten ticks at 1, 2 or 5 times a power of ten.</summary>
    private static IEnumerable<double> Ticks(double min, double max)
    {
        double raw = (max - min) / 6, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1.0, 2.0, 5.0, 10.0 }.Select(m => m * magnitude).First(s => s >= raw);
        for (double t = Math.Ceiling(min / step) * step; t <= max + step * 1e-9; t += step) yield return Math.Abs(t) < step * 1e-9 ? 0 : t;
    }

    /// <summary>Decades and their 2× and 5× points, as log10 values.</summary>
    private static IEnumerable<double> LogTicks(double min, double max)
    {
        for (double decade = Math.Floor(min); decade <= max; decade++)
            foreach (double m in new[] { 1.0, 2.0, 5.0 })
            {
                double t = decade + Math.Log10(m);
                if (t >= min && t <= max) yield return t;
            }
    }

    private static string Format(double value) => value.ToString(Math.Abs(value) >= 1000 ? "0" : "0.###", CultureInfo.InvariantCulture);

    private static string Escape(string text) => text.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
