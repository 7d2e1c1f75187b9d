using System.Text.Json;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Daemon.Tests;

/// <summary>Request fields as the daemon reads them, before any engine work.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class CompletionRequestTests
{
    private static readonly Core.Tokenization.ITokenizer Gpt2 = Core.Tokenization.ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-gpt2/tokenizer.json"));

    private static JsonElement Json(string text) => JsonDocument.Parse(text).RootElement;

    [Fact]
    public void Text_that_cannot_fit_the_context_is_refused_before_tokenizing_and_bad_UTF8_names_its_field()
    {
        var fits = CompletionRequest.Tokens(Json("\"hello world\""), "text", Gpt2, context: 16);
        Assert.Equal(Gpt2.Encode("hello world"), fits);

        var tooLong = Assert.Throws<ApiError>(() => CompletionRequest.Tokens(Json($"\"{new string('x', 1_000_000)}\""), "text", Gpt2, context: 2048));
        Assert.Equal(400, tooLong.Status);
        Assert.Contains("more than 2048 tokens", tooLong.Message);

        var invalid = Assert.Throws<ApiError>(() => CompletionRequest.Parse(JsonDocument.Parse("{\"prompt\":[2],\"mode\":\"kv\u00ff\"}"u8.ToArray().Select(b => b == 0xC3 ? (byte)0xFF : b).ToArray()).RootElement, Gpt2, 1, 16, 2048));
        Assert.Equal(400, invalid.Status);
        Assert.Contains("'mode' is not valid text", invalid.Message);
    }
}
