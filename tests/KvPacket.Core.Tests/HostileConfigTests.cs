using System.Text.Json.Nodes;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using Xunit;

namespace KvPacket.Tests;

/// <summary>config.json values from untrusted sources: each nonsense value is a format error naming its field.</summary>
public class HostileConfigTests
{
    [Theory]
    [InlineData("num_hidden_layers", "2147483647")]
    [InlineData("hidden_size", "1099511627776")]
    [InlineData("rms_norm_eps", "1.5")]
    [InlineData("rms_norm_eps", "2147483647")]
    [InlineData("head_dim", "\"abc\"")]
    [InlineData("tie_word_embeddings", "-1")]
    [InlineData("tie_word_embeddings", "{}")]
    [InlineData("eos_token_id", "2147483647")]
    [InlineData("eos_token_id", "\"x\"")]
    [InlineData("bos_token_id", "-5")]
    [InlineData("max_position_embeddings", "0")]
    public void A_nonsense_value_is_named(string field, string value) =>
        Assert.Equal(field, LoadWithConfig(json => json[field] = JsonNode.Parse(value)).Field);

    [Theory]
    [InlineData("factor", "0")]
    [InlineData("factor", "-1")]
    [InlineData("high_freq_factor", "0.5")]
    public void A_nonsense_rope_scaling_is_named(string field, string value) =>
        Assert.StartsWith("rope_scaling.", LoadWithConfig(json => (json["rope_parameters"] ?? json["rope_scaling"])![field] = JsonNode.Parse(value)).Field);

    /// <summary>Loads a copy of tiny-llama3 whose config.json <paramref name="edit"/> changed; returns the format error it must give.</summary>
    private static CheckpointFormatException LoadWithConfig(Action<JsonNode> edit)
    {
        using var temp = Fixtures.TempDirectory();
        foreach (string file in Directory.GetFiles(Fixtures.PathOf("tiny-llama3"))) File.Copy(file, Path.Combine(temp.Path, Path.GetFileName(file)));
        string config = Path.Combine(temp.Path, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!;
        edit(json);
        File.WriteAllText(config, json.ToJsonString());
        return Assert.Throws<CheckpointFormatException>(() => CheckpointLoader.Load(temp.Path));
    }
}
