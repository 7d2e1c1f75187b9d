using System.Globalization;
using System.Text;

namespace KvPacket.Daemon;

/// <summary>Counters the daemon keeps and prints in Prometheus text format at <c>/metrics</c>.</summary>
public sealed class DaemonMetrics
{
    private static readonly double[] TtftBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
    private readonly long[] _ttftCounts = new long[TtftBuckets.Length + 1];
    private readonly Dictionary<string, long> _requests = new();
    private readonly Lock _gate = new();
    private long _tokens, _ttftCount;
    private double _ttftSum;

    /// <summary>Counts a finished request by its outcome (HTTP status).</summary>
    public void Request(int status)
    {
        string key = status.ToString(CultureInfo.InvariantCulture);
        lock (_gate) _requests[key] = _requests.GetValueOrDefault(key) + 1;
    }

    /// <summary>Counts generated tokens and one time to first token.</summary>
    public void Completion(int tokens, double ttftSeconds)
    {
        lock (_gate)
        {
            _tokens += tokens;
            if (tokens == 0) return;
            _ttftCount++;
            _ttftSum += ttftSeconds;
            int bucket = 0;
            while (bucket < TtftBuckets.Length && ttftSeconds > TtftBuckets[bucket]) bucket++;
            _ttftCounts[bucket]++;
        }
    }

    /// <summary>The exposition text, with the gauges given by the caller.</summary>
    public string Render(IEnumerable<(string Name, string Help, double Value)> gauges)
    {
        var s = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        lock (_gate)
        {
            s.AppendLine("# HELP kvpacket_requests_total Requests answered, by HTTP status.");
            s.AppendLine("# TYPE kvpacket_requests_total counter");
            foreach (var (status, count) in _requests.OrderBy(r => r.Key)) s.AppendLine(c, $"kvpacket_requests_total{{status=\"{status}\"}} {count}");
            s.AppendLine("# HELP kvpacket_generated_tokens_total Tokens generated.");
            s.AppendLine("# TYPE kvpacket_generated_tokens_total counter");
            s.AppendLine(c, $"kvpacket_generated_tokens_total {_tokens}");
            s.AppendLine("# HELP kvpacket_ttft_seconds Time from request to first token.");
            s.AppendLine("# TYPE kvpacket_ttft_seconds histogram");
            long cumulative = 0;
            for (int b = 0; b < TtftBuckets.Length; b++)
            {
                cumulative += _ttftCounts[b];
                s.AppendLine(c, $"kvpacket_ttft_seconds_bucket{{le=\"{TtftBuckets[b]}\"}} {cumulative}");
            }
            s.AppendLine(c, $"kvpacket_ttft_seconds_bucket{{le=\"+Inf\"}} {_ttftCount}");
            s.AppendLine(c, $"kvpacket_ttft_seconds_sum {_ttftSum}");
            s.AppendLine(c, $"kvpacket_ttft_seconds_count {_ttftCount}");
        }
        foreach (var (name, help, value) in gauges)
        {
            s.AppendLine(c, $"# HELP {name} {help}");
            s.AppendLine(c, $"# TYPE {name} gauge");
            s.AppendLine(c, $"{name} {value}");
        }
        return s.ToString();
    }
}
