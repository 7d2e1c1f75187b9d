namespace KvPacket.Engine.Serving;

/// <summary>
/// OpenAI's <c>stop</c>: generation ends where the generated <em>text</em> first contains a stop string, wherever the
/// token boundaries fall, and the stop string itself is not returned. Text that could still turn out to begin a stop
/// string is held back until the next piece decides it, so a stream never shows what the final text leaves out.
/// </summary>
public sealed class StopTextMatcher(IReadOnlyList<string> stops)
{
    private string _held = "";

    /// <summary>The stop strings.</summary>
    public IReadOnlyList<string> Stops => stops;

    /// <summary>Whether a stop string has been found.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Takes the next decoded piece; returns the text now safe to show (all of it before a stop string, once found).</summary>
    public string Append(string piece)
    {
        if (Stopped) return "";
        string text = _held + piece;
        int first = -1;
        foreach (string stop in stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            Stopped = true;
            _held = "";
            return text[..first];
        }
        int keep = LongestStopPrefixAtEnd(text);
        _held = text[^keep..];
        return text[..^keep];
    }

    /// <summary>The text held back when generation ends without a stop string: it was never a stop string after all.</summary>
    public string Flush()
    {
        string rest = _held;
        _held = "";
        return rest;
    }

    private int LongestStopPrefixAtEnd(string text)
    {
        int longest = 0;
        foreach (string stop in stops)
            for (int length = Math.Min(stop.Length - 1, text.Length); length > longest; length--)
                if (text.AsSpan(text.Length - length).SequenceEqual(stop.AsSpan(0, length)))
                {
                    longest = length;
                    break;
                }
        return longest;
    }
}
