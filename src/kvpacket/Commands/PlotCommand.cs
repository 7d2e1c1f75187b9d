using System.CommandLine;
using System.Globalization;
using KvPacket.Cli.Plots;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket plot qa|loss|trace</c>: SVG charts of what the other commands measured — answer F1 against time to first
/// token per mode from <c>eval --task qa</c> results, a pre-training loss curve from <c>pretrain --loss-curve</c>, and a
/// profiling run's timeline from a <c>--trace</c> file.
/// </summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var command = new Command("plot", "Draw SVG charts of eval results and loss curves");
        var results = new Argument<string[]>("results") { Description = "eval --task qa result files (JSON)", Arity = ArgumentArity.OneOrMore };
        var qaOut = new Option<string>("--out") { Description = "SVG file to write", Required = true };
        var qa = new Command("qa", "F1 against mean time to first token, one point per mode") { results, qaOut };
        qa.SetAction(parse =>
        {
            var scores = parse.GetValue(results)!.SelectMany(file => QaResultFile.Read<QaScore>(file, "scores")).ToList();
            QaChart(scores, parse.GetValue(qaOut)!);
            return 0;
        });
        var curves = new Argument<string[]>("curves") { Description = "pretrain --loss-curve CSV files, in order (a run resumed across calls)", Arity = ArgumentArity.OneOrMore };
        var lossOut = new Option<string>("--out") { Description = "SVG file to write", Required = true };
        var window = new Option<int>("--window") { Description = "Steps averaged per point", DefaultValueFactory = _ => 100 };
        var continued = new Option<string[]>("--continued")
        {
            Description = "Loss curves of a run continued from the first one's model (pretrain --init), in order: a second line drawn after the first run's last step",
            AllowMultipleArgumentsPerToken = true,
        };
        var loss = new Command("loss", "Training loss against step") { curves, lossOut, window, continued };
        loss.SetAction(parse =>
        {
            LossChart(parse.GetValue(curves)!, parse.GetValue(continued) ?? [], parse.GetValue(window), parse.GetValue(lossOut)!);
            return 0;
        });
        var traceFile = new Argument<string>("trace") { Description = "A --trace file (Chrome / Perfetto trace JSON)" };
        var traceOut = new Option<string>("--out") { Description = "SVG file to write", Required = true };
        var from = new Option<double>("--from-ms") { Description = "Start of the window drawn (ms into the trace)", DefaultValueFactory = _ => 0 };
        var to = new Option<double?>("--to-ms") { Description = "End of the window drawn (default: the trace's end)" };
        var rows = new Option<int>("--rows") { Description = "Tracks drawn at most (scheduler, packets, stages, then requests in order)", DefaultValueFactory = _ => 24 };
        var trace = new Command("trace", "A profiling run's timeline: a row per track, a bar per span") { traceFile, traceOut, from, to, rows };
        trace.SetAction(parse =>
        {
            string path = parse.GetValue(traceFile)!, output = parse.GetValue(traceOut)!;
            using var input = File.OpenRead(path);
            var svg = new StringWriter();   // drawn whole first: a trace that cannot be drawn leaves no empty file behind
            var bars = Core.Diagnostics.TraceTimeline.Write(input, svg, parse.GetValue(from), parse.GetValue(to), parse.GetValue(rows), Path.GetFileName(path));
            File.WriteAllText(output, svg.ToString());
            Console.WriteLine($"wrote {output}: {bars.Count} spans");
            return 0;
        });
        command.Subcommands.Add(qa);
        command.Subcommands.Add(loss);
        command.Subcommands.Add(trace);
        return command;
    }

    /// <summary>One point per mode: F1 over all questions against mean TTFT (log scale).</summary>
    public static void QaChart(IReadOnlyList<QaScore> scores, string path)
    {
        var chart = new SvgChart($"Answer F1 vs time to first token ({scores.Where(s => s.Type == "all").Select(s => s.Questions).DefaultIfEmpty().Max()} questions)",
            "mean time to first token (ms, log scale)", "F1 (all question types)") { LogX = true, YRange = (0, 1) };
        foreach (var s in scores.Where(s => s.Type == "all"))
            chart.Add(new ChartSeries(s.Mode, [(s.MeanTtftSeconds * 1e3, s.F1)], Labels: [string.Create(CultureInfo.InvariantCulture, $"{s.F1:F3}")]));
        chart.Write(path);
        Console.WriteLine($"wrote {path}");
    }

    private static void LossChart(IReadOnlyList<string> files, IReadOnlyList<string> continuedFiles, int window, string path)
    {
        var first = ReadLoss(files);
        var then = ReadLoss(continuedFiles);
        var chart = new SvgChart($"Pre-training loss ({first.Count + then.Count} steps)", "step", $"loss (weighted cross-entropy, mean of {window} steps)");
        chart.Add(new ChartSeries(then.Count == 0 ? "loss" : "pre-training", Averaged(first, 0, window), Line: true));
        if (then.Count > 0) chart.Add(new ChartSeries("continued", Averaged(then, first.Count == 0 ? 0 : first.Keys.Last(), window), Line: true));
        chart.Write(path);
        Console.WriteLine($"wrote {path}");
    }

    // One run's loss by step; later files win for a step logged twice (a call cut off after its last checkpoint repeats those steps).
    private static SortedDictionary<int, double> ReadLoss(IReadOnlyList<string> files)
    {
        var loss = new SortedDictionary<int, double>();
        foreach (string file in files)
            foreach (string line in File.ReadLines(file).Skip(1))
            {
                var fields = line.Split(',');
                if (fields.Length < 2 || !int.TryParse(fields[0], CultureInfo.InvariantCulture, out int step) || !double.TryParse(fields[1], CultureInfo.InvariantCulture, out double value))
                    throw new InvalidDataException($"{file}: '{line}' is not 'step,loss,…'");
                loss[step] = value;
            }
        return loss;
    }

    private static List<(double X, double Y)> Averaged(SortedDictionary<int, double> loss, int offset, int window) =>
        loss.Chunk(Math.Max(1, window)).Select(chunk => ((double)(offset + chunk[^1].Key), chunk.Average(p => p.Value))).ToList();
}
