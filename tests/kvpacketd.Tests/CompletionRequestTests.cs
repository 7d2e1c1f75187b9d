using System.Text.Json;
using KvPacket.Engine.Rag;
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

        var invalid = Assert.Throws<ApiError>(() => CompletionRequest.Parse(JsonDocument.Parse("{\"prompt\":[2],\"mode\":\"kv\u00ff\"}"u8.ToArray().Select(b => b == 0xC3 ? (byte)0xFF : b).ToArray()).RootElement, Gpt2, 1, 16, 2048, "m", RagMode.Naive));
        Assert.Equal(400, invalid.Status);
        Assert.Contains("'mode' is not valid text", invalid.Message);
    }

    private static CompletionRequest Parse(string json, RagMode packetMode = RagMode.Naive) => CompletionRequest.Parse(Json(json), Gpt2, 1, 64, 2048, "m", packetMode);

    private static ApiError Refused(string json) => Assert.Throws<ApiError>(() => Parse(json));

    [Fact]
    public void A_batched_prompt_gives_one_prompt_each_and_n_gives_choices_with_consecutive_seeds()
    {
        var request = Parse("""{"prompt": ["Hello there", "General Kenobi"], "n": 3, "seed": 10, "temperature": 0.7, "echo": true}""");
        Assert.Equal(2, request.Prompts.Count);
        Assert.Equal(Gpt2.Encode("General Kenobi"), request.Prompts[1].Engine.Prompt);
        Assert.Equal("General Kenobi", request.Prompts[1].Text);
        Assert.True(request.Echo);
        var choices = request.Choices().ToArray();
        Assert.Equal([0, 1, 2, 3, 4, 5], choices.Select(c => c.Index));
        Assert.Equal([10UL, 11UL, 12UL, 10UL, 11UL, 12UL], choices.Select(c => c.Engine.Limits.Sampling.Seed));
        Assert.Equal(Gpt2.Encode("General Kenobi"), choices[4].Engine.Prompt);

        var ids = Parse("""{"prompt": [[5, 6], [7]]}""");
        Assert.Equal([[5, 6], [7]], ids.Prompts.Select(p => p.Engine.Prompt));
        Assert.Equal(Gpt2.Decode([5, 6]), ids.Prompts[0].Text);
        Assert.Equal([5, 6, 7], Parse("""{"prompt": [5, 6, 7]}""").Prompts.Single().Engine.Prompt);
        Assert.Equal("prompt", Refused("""{"prompt": ["a", [5]]}""").Param);
        Assert.Equal("n", Refused("""{"prompt": "a", "n": 0}""").Param);
        Assert.Equal("n", Refused("""{"prompt": "a", "n": 129}""").Param);
    }

    [Fact]
    public void Fields_that_would_change_the_output_but_are_not_honoured_are_refused_by_name_and_neutral_values_pass()
    {
        foreach (var (json, field) in new[]
        {
            ("""{"prompt": "a", "presence_penalty": 2.5}""", "presence_penalty"),
            ("""{"prompt": "a", "frequency_penalty": "high"}""", "frequency_penalty"),
            ("""{"prompt": "a", "logit_bias": {"-3": -100}}""", "logit_bias"),
            ("""{"prompt": "a", "logit_bias": {"7": 101}}""", "logit_bias"),
            ("""{"prompt": "a", "logit_bias": {"x": 1}}""", "logit_bias"),
            ("""{"prompt": "a", "logprobs": 6}""", "logprobs"),
            ("""{"prompt": "a", "logprobs": 2, "echo": true}""", "logprobs"),
            ("""{"prompt": "a", "best_of": 3}""", "best_of"),
            ("""{"prompt": "a", "suffix": "end"}""", "suffix"),
            ("""{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}""", "stop"),
            ("""{"prompt": "a", "stream_options": {"include_usage": true}}""", "stream_options"),
            ("""{"prompt": "a", "echo": "yes"}""", "echo"),
            ("""{"prompt": "a", "mode": "0"}""", "mode"),
        })
        {
            var error = Refused(json);
            Assert.Equal(400, error.Status);
            Assert.Equal(field, error.Param);
            Assert.Equal("invalid_request_error", error.Type);
        }
        var neutral = Parse("""{"prompt": "a", "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "logprobs": null, "best_of": 1, "suffix": "", "user": "u1", "model": "m"}""");
        Assert.Single(neutral.Prompts);
        var sampling = Parse("""{"prompt": "a", "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"500": -100, "7": 2.5}}""").Prompts[0].Engine.Limits.Sampling;
        Assert.Equal((0.5f, -1f), (sampling.PresencePenalty, sampling.FrequencyPenalty));
        Assert.Equal(new Dictionary<int, float> { [500] = -100, [7] = 2.5f }, sampling.LogitBias);
        var wrongModel = Refused("""{"prompt": "a", "model": "gpt-4o"}""");
        Assert.Equal((404, "model", "model_not_found"), (wrongModel.Status, wrongModel.Param, wrongModel.Code));
    }

    [Fact]
    public void Without_a_mode_documents_run_in_the_daemons_packet_mode_and_a_prompt_alone_runs_full()
    {
        Assert.Equal(RagMode.KvLink, Parse("""{"prompt": "a", "documents": ["b"]}""", RagMode.KvLink).Prompts[0].Engine.Mode);
        Assert.Equal(RagMode.Naive, Parse("""{"prompt": "a", "packets": ["x"]}""").Prompts[0].Engine.Mode);
        Assert.Equal(RagMode.Full, Parse("""{"prompt": "a"}""", RagMode.KvPacket).Prompts[0].Engine.Mode);
        Assert.Equal(RagMode.KvPacket, Parse("""{"prompt": "a", "packets": ["x"], "mode": "KVPacket"}""").Prompts[0].Engine.Mode);
    }
}
