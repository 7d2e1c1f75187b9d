using System.Diagnostics;
using System.Text.Json.Nodes;
using KvPacket.Core.Tokenization;
using Xunit;

namespace KvPacket.Tests;

/// <summary>tokenizer.json files from untrusted sources: each defect is a format error naming the field, or a fast clear error, never a hang or a crash.</summary>
public class HostileTokenizerTests
{
    private static string Write(TempDirectory temp, Action<JsonNode> mutate)
    {
        var json = JsonNode.Parse(File.ReadAllText(Fixtures.PathOf("bpe-llama3/tokenizer.json")))!;
        mutate(json);
        string path = Path.Combine(temp.Path, "tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    private static void SetSplitPattern(JsonNode json, string pattern) =>
        json["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!["Regex"] = pattern;

    [Fact]
    public void A_pattern_that_backtracks_exponentially_fails_fast_with_a_clear_error()
    {
        using var temp = Fixtures.TempDirectory();
        var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(Write(temp, j => SetSplitPattern(j, "(a+)+$")));
        var clock = Stopwatch.StartNew();

        var error = Assert.Throws<InvalidDataException>(() => tokenizer.Encode(new string('a', 46) + "!"));

        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"{clock.Elapsed}");
        Assert.Contains("(a+)+$", error.Message);
    }

    [Fact]
    public void An_invalid_pattern_is_a_format_error()
    {
        using var temp = Fixtures.TempDirectory();
        var error = Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(Write(temp, j => SetSplitPattern(j, "(("))));
        Assert.Equal("pre_tokenizer.pattern", error.Field);
    }

    [Theory]
    [InlineData(int.MaxValue, false)]
    [InlineData(-1, true)]
    [InlineData(1 << 30, true)]
    public void Token_ids_outside_the_vocabulary_are_format_errors(int id, bool addedToken)
    {
        using var temp = Fixtures.TempDirectory();
        string path = Write(temp, j =>
        {
            if (addedToken) j["added_tokens"]![0]!["id"] = id;
            else j["model"]!["vocab"]!["zzz-not-a-token"] = id;
        });
        var error = Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(path));
        Assert.StartsWith(addedToken ? "added_tokens" : "model.vocab", error.Field);
    }

    [Theory]
    [InlineData("99999999999")]
    [InlineData("2147483646")]
    [InlineData("-3")]
    [InlineData("x")]
    public void A_tiktoken_rank_that_is_not_a_line_id_is_a_format_error(string rank)
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "tokenizer.model");
        File.WriteAllLines(path, ["YQ== 0", "Yg== 1", $"Yw== {rank}"]);
        var error = Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadTiktoken(path, []));
        Assert.Equal("line 3", error.Field);
    }
}
