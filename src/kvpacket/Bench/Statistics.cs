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
}
