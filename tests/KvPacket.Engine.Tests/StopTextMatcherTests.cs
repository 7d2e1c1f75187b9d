using KvPacket.Engine.Serving;
using Xunit;

namespace KvPacket.Tests;

/// <summary>OpenAI's stop strings, matched on generated text.</summary>
public class StopTextMatcherTests
{
    [Theory]
    [InlineData(new[] { "Hel", "lo wor", "ld" }, "lo w", "Hel", true)]          // a stop string across token boundaries
    [InlineData(new[] { "abc", "d" }, "cd", "ab", true)]
    [InlineData(new[] { "a", "b", "x" }, "abc", "abx", false)]                  // held back while it might be a stop, then released
    [InlineData(new[] { "no stop here" }, "\n", "no stop here", false)]
    [InlineData(new[] { "one.", " two." }, ".", "one", true)]                   // the first occurrence wins
    public void Stop_strings_match_on_text_wherever_tokens_split_it_and_are_left_out(string[] pieces, string stop, string expected, bool stopped)
    {
        var matcher = new StopTextMatcher([stop, "never"]);
        var shown = new System.Text.StringBuilder();
        foreach (string piece in pieces)
        {
            shown.Append(matcher.Append(piece));
            Assert.True(expected.StartsWith(shown.ToString(), StringComparison.Ordinal), $"showed '{shown}' before the text was decided");
        }
        if (!matcher.Stopped) shown.Append(matcher.Flush());
        Assert.Equal(expected, shown.ToString());
        Assert.Equal(stopped, matcher.Stopped);
    }
}
