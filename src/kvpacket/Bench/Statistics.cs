namespace KvPacket.Cli.Bench;

/// <summary>Summaries of repeated timings.</summary>
internal static class Statistics
{
    /// <summary>The median (the upper one of an even count).</summary>
    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    /// <summary>Adds <c>NAME_ttft_p50_ms</c> and <c>NAME_ttft_p99_ms</c> (nearest rank) of times to first token in seconds.</summary>
    public static void RecordTtft(Dictionary<string, double> figures, string name, IEnumerable<double> seconds)
    {
        var sorted = seconds.Order().ToArray();
        figures[$"{name}_ttft_p50_ms"] = sorted[sorted.Length / 2] * 1e3;
        figures[$"{name}_ttft_p99_ms"] = sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(sorted.Length * 0.99) - 1)] * 1e3;
    }
}
