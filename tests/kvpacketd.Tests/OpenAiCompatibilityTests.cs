using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Engine.Rag;
using KvPacket.Store;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Daemon.Tests;

/// <summary>
/// kvpacketd as OpenAI clients see it, on our own QA model (it has a tokenizer, so text in, text out) with its KVLink
/// adapter: one daemon for the whole class, every test a different part of the API.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class OpenAiCompatibilityTests : IAsyncLifetime
{
    private static readonly string Model = Fixtures.ShippedModel("kvqa-17m");
    private const string Prompt = "Document: Vosk\nThe city of Vosk lies in the region of Tarrel. Vosk was founded in 1712.\n\nQuestion: Which region does Vosk lie in?\nAnswer:";
    private readonly TempDirectory _temp = Fixtures.TempDirectory();
    private DaemonProcess _daemon = null!;
    private int _port;

    public async Task InitializeAsync()
    {
        string store = Path.Combine(_temp.Path, "store");
        string adapter;
        using (var checkpoint = CheckpointLoader.Load(Model))
        using (var packets = PacketStore.Open(store))
        {
            var fingerprint = ModelFingerprint.Of(checkpoint);
            var links = AdapterFile.Read(Path.Combine(Model, "kvlink-adapter.safetensors"), fingerprint, checkpoint.Config.HiddenSize);
            await packets.PutAdapterAsync(links, fingerprint, checkpoint.Config.HiddenSize);
            adapter = links.Id;
        }
        using (var probe = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            _port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        _daemon = await DaemonProcess.StartAsync(store, "--model", Model, "--adapter", adapter, "--tcp", _port.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    public async Task DisposeAsync()
    {
        await _daemon.DisposeAsync();
        _temp.Dispose();
    }

    private async Task<(HttpStatusCode Status, JsonElement Body)> PostAsync(object body)
    {
        var response = await _daemon.Client.PostAsJsonAsync("/v1/completions", body);
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.Clone());
    }

    private async Task<JsonElement> CompleteAsync(object body)
    {
        var (status, json) = await PostAsync(body);
        Assert.True(status == HttpStatusCode.OK, json.ToString());
        return json;
    }

    private static string TextOf(JsonElement completion, int choice = 0) => completion.GetProperty("choices")[choice].GetProperty("text").GetString()!;

    /// <summary>A streamed completion's text per choice index, and each choice's finish reason.</summary>
    private async Task<(Dictionary<int, string> Text, Dictionary<int, string> Finish)> StreamAsync(object body)
    {
        using var response = await _daemon.Client.PostAsJsonAsync("/v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var text = new Dictionary<int, string>();
        var finish = new Dictionary<int, string>();
        foreach (string line in (await response.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
            foreach (var choice in JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices").EnumerateArray())
            {
                int index = choice.GetProperty("index").GetInt32();
                text[index] = text.GetValueOrDefault(index, "") + choice.GetProperty("text").GetString();
                if (choice.GetProperty("finish_reason").GetString() is { } reason) finish[index] = reason;
            }
        }
        return (text, finish);
    }

    [Fact]
    public async Task Models_are_listed_and_unknown_routes_and_methods_get_OpenAIs_error_body()
    {
        var list = JsonDocument.Parse(await _daemon.Client.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal("list", list.GetProperty("object").GetString());
        var model = list.GetProperty("data").EnumerateArray().Single();
        Assert.Equal(("kvqa-17m", "model"), (model.GetProperty("id").GetString(), model.GetProperty("object").GetString()));
        Assert.Equal("kvlink", model.GetProperty("kvpacket").GetProperty("default_packet_mode").GetString());
        Assert.Equal("kvqa-17m", JsonDocument.Parse(await _daemon.Client.GetStringAsync("/v1/models/kvqa-17m")).RootElement.GetProperty("id").GetString());

        foreach (var (method, path, status, code) in new[]
        {
            (HttpMethod.Get, "/v1/models/gpt-4o", 404, "model_not_found"), (HttpMethod.Get, "/v1/nothing", 404, "unknown_url"),
            (HttpMethod.Get, "/v1/completions", 405, "method_not_allowed"), (HttpMethod.Put, "/v1/models", 405, "method_not_allowed"),
        })
        {
            var response = await _daemon.Client.SendAsync(new HttpRequestMessage(method, path));
            Assert.Equal(status, (int)response.StatusCode);
            var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal(code, error.GetProperty("code").GetString());
            Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
            Assert.Equal(JsonValueKind.String, error.GetProperty("type").ValueKind);
            Assert.True(error.TryGetProperty("param", out _));
        }
    }

    [Fact]
    public async Task A_stop_string_across_a_token_boundary_ends_the_text_before_it_plain_and_streamed()
    {
        var free = await CompleteAsync(new { prompt = Prompt, max_tokens = 12, temperature = 0 });
        int[] tokens = [.. free.GetProperty("choices")[0].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32())];
        string text = TextOf(free);
        // The stop string: the end of one token's text and the start of the next's, so no token equals it.
        var tokenizer = Core.Tokenization.TokenizerLoader.Load(Model);
        int split = tokenizer.Decode(tokens[..1]).Length;
        Assert.InRange(split, 2, text.Length - 1);
        string stop = text[(split - 2)..(split + 1)];
        string expected = text[..text.IndexOf(stop, StringComparison.Ordinal)];

        var stopped = await CompleteAsync(new { prompt = Prompt, max_tokens = 12, temperature = 0, stop = new[] { "never appears", stop } });
        Assert.Equal(expected, TextOf(stopped));
        Assert.Equal("stop", stopped.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(2, stopped.GetProperty("usage").GetProperty("completion_tokens").GetInt32()); // the token that completed the stop string

        var (streamed, finish) = await StreamAsync(new { prompt = Prompt, max_tokens = 12, temperature = 0, stop, stream = true });
        Assert.Equal(expected, streamed[0]);
        Assert.Equal("stop", finish[0]);
    }

    [Fact]
    public async Task N_choices_echo_and_a_batch_of_prompts_each_equal_their_single_requests()
    {
        const string Second = "Question: Which region does Vosk lie in?\nAnswer:";
        string first = TextOf(await CompleteAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0.9, seed = 5 }));
        string firstNextSeed = TextOf(await CompleteAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0.9, seed = 6 }));
        string second = TextOf(await CompleteAsync(new { prompt = Second, max_tokens = 6, temperature = 0.9, seed = 5 }));

        var batch = await CompleteAsync(new { prompt = new[] { Prompt, Second }, n = 2, max_tokens = 6, temperature = 0.9, seed = 5 });
        var choices = batch.GetProperty("choices");
        Assert.Equal([0, 1, 2, 3], choices.EnumerateArray().Select(c => c.GetProperty("index").GetInt32()));
        Assert.Equal([first, firstNextSeed, second], new[] { TextOf(batch, 0), TextOf(batch, 1), TextOf(batch, 2) });
        Assert.Equal(choices.EnumerateArray().Sum(c => c.GetProperty("tokens").GetArrayLength()), batch.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        // The two choices of a prompt compute it once: one the whole prompt, the other only its last block's tokens.
        int[] computed = [.. choices.EnumerateArray().Take(2).Select(c => c.GetProperty("kvpacket").GetProperty("computed_prompt_tokens").GetInt32()).Order()];
        Assert.InRange(computed[0], 1, 16);
        Assert.True(computed[1] > 16, $"the prompt's first choice computed {computed[1]} tokens");

        var echoed = await CompleteAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0.9, seed = 5, echo = true });
        Assert.Equal(Prompt + first, TextOf(echoed));
        var (streamed, _) = await StreamAsync(new { prompt = new[] { Prompt, Second }, max_tokens = 6, temperature = 0.9, seed = 5, echo = true, stream = true });
        Assert.Equal(Prompt + first, streamed[0]);
        Assert.Equal(Second + second, streamed[1]);
    }

    [Fact]
    public async Task Packets_without_a_mode_run_as_the_adapters_mode_and_a_mode_the_adapter_cannot_run_is_refused()
    {
        var packet = await _daemon.PostAsync("/v1/packets", new { text = "Document: Vosk\nThe city of Vosk lies in the region of Tarrel.\n\n" }, 201);
        string id = packet.GetProperty("id").GetString()!;
        const string Question = "Question: Which region does Vosk lie in?\nAnswer:";
        var linked = await CompleteAsync(new { prompt = Question, packets = new[] { id }, max_tokens = 4, temperature = 0 });
        Assert.Equal("kvlink", linked.GetProperty("choices")[0].GetProperty("kvpacket").GetProperty("mode").GetString());

        var (status, body) = await PostAsync(new { prompt = Question, packets = new[] { id }, mode = "kvpacket", max_tokens = 4 });
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("has only link tokens", body.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal("mode", body.GetProperty("error").GetProperty("param").GetString());

        (status, body) = await PostAsync(new { prompt = Question, packets = new[] { "0123456789abcdef" }, max_tokens = 4 });
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Equal("packet_not_found", body.GetProperty("error").GetProperty("code").GetString());

        (status, body) = await PostAsync(new { prompt = Question, max_tokens = 4, logit_bias = new Dictionary<string, int> { ["8192"] = 5 } });
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("outside the vocabulary", body.GetProperty("error").GetProperty("message").GetString());

        (status, body) = await PostAsync(new { prompt = Question, max_tokens = 4, best_of = 3 });
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("best_of", body.GetProperty("error").GetProperty("param").GetString());

        // logit_bias: -100 on the greedy first token makes the next likeliest one first.
        var free = await CompleteAsync(new { prompt = Prompt, max_tokens = 2, temperature = 0, logprobs = 2 });
        int first = free.GetProperty("choices")[0].GetProperty("tokens")[0].GetInt32();
        var biased = await CompleteAsync(new { prompt = Prompt, max_tokens = 2, temperature = 0, logit_bias = new Dictionary<string, int> { [first.ToString(System.Globalization.CultureInfo.InvariantCulture)] = -100 } });
        Assert.NotEqual(first, biased.GetProperty("choices")[0].GetProperty("tokens")[0].GetInt32());
        Assert.Equal(free.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("top_logprobs")[0].EnumerateObject().ElementAt(1).Name,
            TextOf(biased).Length > 0 ? Core.Tokenization.TokenizerLoader.Load(Model).Decode([biased.GetProperty("choices")[0].GetProperty("tokens")[0].GetInt32()]) : "");
    }

    /// <summary>
    /// The official OpenAI .NET library, over loopback TCP and over the Unix socket (its transport given an
    /// <see cref="HttpClient"/> that dials the socket). Version 2.15 has no public client for legacy completions, so
    /// those go through its pipeline.
    /// </summary>
    [Fact]
    public async Task The_official_OpenAI_library_lists_the_model_and_completes_over_TCP_and_the_Unix_socket()
    {
        using var overSocket = UnixSocketClient.Create(_daemon.Socket);
        foreach (var (endpoint, transport) in new (string, HttpClient?)[] { ($"http://127.0.0.1:{_port}/v1", null), ("http://kvpacketd/v1", overSocket) })
        {
            var options = new OpenAI.OpenAIClientOptions { Endpoint = new Uri(endpoint) };
            if (transport is not null) options.Transport = new System.ClientModel.Primitives.HttpClientPipelineTransport(transport);
            var client = new OpenAI.OpenAIClient(new System.ClientModel.ApiKeyCredential("unused"), options);

            var models = (await client.GetOpenAIModelClient().GetModelsAsync()).Value;
            Assert.Equal("kvqa-17m", Assert.Single(models).Id);
            Assert.Equal("kvqa-17m", (await client.GetOpenAIModelClient().GetModelAsync("kvqa-17m")).Value.Id);
            var missing = await Assert.ThrowsAsync<System.ClientModel.ClientResultException>(() => client.GetOpenAIModelClient().GetModelAsync("gpt-4o"));
            Assert.Equal(404, missing.Status);

            // Completions through the library's own pipeline (its transport, authentication and retries; no typed client exists).
            var message = client.Pipeline.CreateMessage();
            message.Request.Method = "POST";
            message.Request.Uri = new Uri(endpoint + "/completions");
            message.Request.Headers.Set("Content-Type", "application/json");
            message.Request.Content = System.ClientModel.BinaryContent.Create(BinaryData.FromObjectAsJson(new { model = "kvqa-17m", prompt = Prompt, max_tokens = 6, temperature = 0, n = 2 }));
            await client.Pipeline.SendAsync(message);
            Assert.Equal(200, message.Response!.Status);
            var completion = JsonDocument.Parse(message.Response.Content.ToString()).RootElement;
            string expected = TextOf(await CompleteAsync(new { prompt = Prompt, max_tokens = 6, temperature = 0 }));
            Assert.Equal([expected, expected], completion.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()));
        }
    }

    private const string Vosk = "Document: Vosk\nThe city of Vosk lies in the region of Tarrel. Vosk was founded in 1712.\n\n";

    [Fact]
    public async Task A_chat_completion_is_the_text_completion_of_the_rendered_template_plain_and_streamed()
    {
        string id = (await _daemon.PostAsync("/v1/packets", new { text = Vosk }, 201)).GetProperty("id").GetString()!;
        var text = await CompleteAsync(new { prompt = "Question: Which region does Vosk lie in?\nAnswer:", packets = new[] { id }, mode = "naive", max_tokens = 8, temperature = 0 });
        var response = await _daemon.Client.PostAsJsonAsync("/v1/chat/completions", new
        {
            model = "kvqa-17m", messages = new[] { new { role = "user", content = "  Which region does Vosk lie in? " } }, packets = new[] { id }, mode = "naive", max_completion_tokens = 8, temperature = 0,
        });
        var chat = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.True(response.IsSuccessStatusCode, chat.ToString());
        Assert.Equal("chat.completion", chat.GetProperty("object").GetString());
        var message = chat.GetProperty("choices")[0].GetProperty("message");
        Assert.Equal("assistant", message.GetProperty("role").GetString());
        Assert.Equal(TextOf(text), message.GetProperty("content").GetString());
        Assert.Equal(" Tarrel", message.GetProperty("content").GetString());
        Assert.Equal(text.GetProperty("usage").ToString(), chat.GetProperty("usage").ToString());

        // Streamed: a first chunk with the role, then content deltas, then the finish reason and (asked for) the usage.
        using var streamed = await _daemon.Client.PostAsJsonAsync("/v1/chat/completions", new
        {
            messages = new object[] { new { role = "user", content = new[] { new { type = "text", text = "Which region does Vosk lie in?" } } } },
            packets = new[] { id }, mode = "naive", max_tokens = 8, temperature = 0, stream = true, stream_options = new { include_usage = true },
        });
        var chunks = (await streamed.Content.ReadAsStringAsync()).Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal))
            .Select(l => JsonDocument.Parse(l[6..]).RootElement).ToList();
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", c.GetProperty("object").GetString()));
        Assert.Equal("assistant", chunks[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        Assert.Equal(" Tarrel", string.Concat(chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0)
            .Select(c => c.GetProperty("choices")[0].GetProperty("delta")).Select(d => d.TryGetProperty("content", out var t) ? t.GetString() : "")));
        Assert.Equal("stop", chunks[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(text.GetProperty("usage").ToString(), chunks[^1].GetProperty("usage").ToString());
    }

    [Fact]
    public async Task Chat_requests_the_template_or_the_server_cannot_serve_are_refused_naming_the_field()
    {
        foreach (var (body, param, contains) in new (object, string, string)[]
        {
            (new { messages = new[] { new { role = "system", content = "Be brief." } } }, "messages", "not a system message"),
            (new { messages = Array.Empty<object>() }, "messages", "non-empty"),
            (new { messages = new[] { new { role = "user", content = new[] { new { type = "image_url", text = "x" } } } } }, "messages", "only parts of type 'text'"),
            (new { messages = new[] { new { role = "user", content = "a" } }, tools = new[] { new { type = "function" } } }, "tools", "not supported"),
            (new { messages = new[] { new { role = "user", content = "a" } }, response_format = new { type = "json_object" } }, "response_format", "text"),
            (new { messages = new[] { new { role = "user", content = "a" } }, prompt = "a" }, "prompt", "'messages', not 'prompt'"),
        })
        {
            var response = await _daemon.Client.PostAsJsonAsync("/v1/chat/completions", body);
            var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
            Assert.Equal(param, error.GetProperty("param").GetString());
            Assert.Contains(contains, error.GetProperty("message").GetString());
        }
    }

    /// <summary>The official OpenAI library's chat client and Microsoft.Extensions.AI's <c>IChatClient</c> over it, on TCP and on the Unix socket.</summary>
    [Fact]
    public async Task The_official_chat_clients_get_the_daemons_answer_over_TCP_and_the_Unix_socket()
    {
        var expected = await CompleteAsync(new { prompt = "Question: Which region does Vosk lie in?\nAnswer:", max_tokens = 8, temperature = 0 });
        using var overSocket = UnixSocketClient.Create(_daemon.Socket);
        foreach (var (endpoint, transport) in new (string, HttpClient?)[] { ($"http://127.0.0.1:{_port}/v1", null), ("http://kvpacketd/v1", overSocket) })
        {
            var options = new OpenAI.OpenAIClientOptions { Endpoint = new Uri(endpoint) };
            if (transport is not null) options.Transport = new System.ClientModel.Primitives.HttpClientPipelineTransport(transport);
            var chat = new OpenAI.Chat.ChatClient("kvqa-17m", new System.ClientModel.ApiKeyCredential("unused"), options);
            var settings = new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8 };
            var completion = (await chat.CompleteChatAsync([new OpenAI.Chat.UserChatMessage("Which region does Vosk lie in?")], settings)).Value;
            Assert.Equal(TextOf(expected), completion.Content[0].Text);
            Assert.Equal(expected.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), completion.FinishReason.ToString().ToLowerInvariant());

            var streamed = new StringBuilder();
            await foreach (var update in chat.CompleteChatStreamingAsync([new OpenAI.Chat.UserChatMessage("Which region does Vosk lie in?")], settings))
                foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            Assert.Equal(TextOf(expected), streamed.ToString());

            // Log-probabilities and a stop sequence through the library's own options.
            var detailed = new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 8, IncludeLogProbabilities = true, TopLogProbabilityCount = 2 };
            string stop = TextOf(expected)[2..4];
            detailed.StopSequences.Add(stop);
            var withDetails = (await chat.CompleteChatAsync([new OpenAI.Chat.UserChatMessage("Which region does Vosk lie in?")], detailed)).Value;
            string text = TextOf(expected);
            Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], withDetails.Content[0].Text);
            Assert.NotEmpty(withDetails.ContentTokenLogProbabilities);
            Assert.All(withDetails.ContentTokenLogProbabilities, t => Assert.Equal(2, t.TopLogProbabilities.Count));
            Assert.StartsWith(withDetails.Content[0].Text, string.Concat(withDetails.ContentTokenLogProbabilities.Select(t => t.Token)));

            Microsoft.Extensions.AI.IChatClient client = Microsoft.Extensions.AI.OpenAIClientExtensions.AsIChatClient(chat);
            var answer = await client.GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Which region does Vosk lie in?")], new Microsoft.Extensions.AI.ChatOptions { Temperature = 0, MaxOutputTokens = 8 });
            Assert.Equal(TextOf(expected), answer.Text);
        }
    }

    [Fact]
    public async Task The_in_process_IChatClient_gives_the_daemons_text_for_the_same_seed_with_packets_and_stop_sequences()
    {
        string id = (await _daemon.PostAsync("/v1/packets", new { text = Vosk }, 201)).GetProperty("id").GetString()!;
        var daemon = await _daemon.PostAsync("/v1/chat/completions", new
        {
            messages = new[] { new { role = "user", content = "In which year was Vosk founded?" } }, packets = new[] { id }, mode = "naive",
            max_tokens = 8, temperature = 0.9, top_p = 0.95, seed = 11,
        });
        string expected = daemon.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;

        await using var engine = await Engine.Serving.KvPacketEngine.LoadAsync(Model);
        Assert.Equal(id, (await engine.AddPacketAsync(Vosk)).Id);
        using Microsoft.Extensions.AI.IChatClient client = new Engine.Serving.KvPacketChatClient(engine, "kvqa-17m");
        var options = new Microsoft.Extensions.AI.ChatOptions
        {
            MaxOutputTokens = 8, Temperature = 0.9f, TopP = 0.95f, Seed = 11,
            AdditionalProperties = new() { [Engine.Serving.KvPacketChatClient.PacketsKey] = new[] { id }, [Engine.Serving.KvPacketChatClient.ModeKey] = "naive" },
        };
        var question = new[] { new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "In which year was Vosk founded?") };
        var response = await client.GetResponseAsync(question, options);
        Assert.Equal(expected, response.Text);
        Assert.Equal(daemon.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), (int)response.Usage!.OutputTokenCount!);

        var streamed = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync(question, options)) streamed.Append(update.Text);
        Assert.Equal(expected, streamed.ToString());

        // A stop sequence inside the answer: the text ends before it, and the finish reason is stop.
        Assert.True(expected.Length > 3, expected);
        string stop = expected[2..4];
        options.StopSequences = [stop];
        var stopped = await client.GetResponseAsync(question, options);
        Assert.Equal(expected[..expected.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Stop, stopped.FinishReason);
        Assert.Throws<NotSupportedException>(() => { client.GetResponseAsync(question, new Microsoft.Extensions.AI.ChatOptions { ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.Json }).GetAwaiter().GetResult(); });
    }

    [Fact]
    public async Task Logprobs_are_the_models_log_softmax_in_the_completions_and_the_chat_shape()
    {
        var completion = await CompleteAsync(new { prompt = Prompt, max_tokens = 3, temperature = 0, logprobs = 5 });
        var logprobs = completion.GetProperty("choices")[0].GetProperty("logprobs");

        // The reference: the model's own logits after the prompt, log-softmaxed here.
        using var checkpoint = CheckpointLoader.Load(Model);
        using var model = new Engine.Forward.Transformer(checkpoint, new Engine.Forward.TransformerOptions { KvType = Core.Memory.DType.F32, KvCacheTokens = 1024 });
        var tokenizer = Core.Tokenization.TokenizerLoader.Load(Model);
        using var sequence = model.CreateSequence();
        var logits = new float[checkpoint.Config.VocabSize];
        model.Prefill(sequence, [checkpoint.Config.BosTokenId!.Value, .. tokenizer.Encode(Prompt)], logits);
        double max = logits.Max(), logZ = max + Math.Log(logits.Sum(x => Math.Exp(x - max)));
        int[] best = [.. Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).Take(5)];

        Assert.Equal(tokenizer.Decode([best[0]]), logprobs.GetProperty("tokens")[0].GetString());
        Assert.Equal(logits[best[0]] - logZ, logprobs.GetProperty("token_logprobs")[0].GetDouble(), 0.02);   // the daemon keeps KV in f16
        var top = logprobs.GetProperty("top_logprobs")[0].EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble());
        Assert.Equal(5, top.Count);
        foreach (int token in best) Assert.Equal(logits[token] - logZ, top[tokenizer.Decode([token])], 0.02);
        Assert.Equal(0, logprobs.GetProperty("text_offset")[0].GetInt32());
        Assert.Equal(TextOf(completion), string.Concat(logprobs.GetProperty("tokens").EnumerateArray().Select(t => t.GetString())));

        var chat = await _daemon.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = "Which region does Vosk lie in?" } }, max_tokens = 3, temperature = 0, logprobs = true, top_logprobs = 2 });
        var content = chat.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content");
        foreach (var entry in content.EnumerateArray())
        {
            Assert.Equal(entry.GetProperty("token").GetString(), System.Text.Encoding.UTF8.GetString([.. entry.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32())]));
            var alternatives = entry.GetProperty("top_logprobs");
            Assert.Equal(2, alternatives.GetArrayLength());
            Assert.Equal(alternatives[0].GetProperty("logprob").GetDouble(), entry.GetProperty("logprob").GetDouble(), 1e-6);  // greedy: the chosen token is the likeliest
            Assert.True(alternatives[0].GetProperty("logprob").GetDouble() >= alternatives[1].GetProperty("logprob").GetDouble());
        }
        Assert.Equal(chat.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), string.Concat(content.EnumerateArray().Select(e => e.GetProperty("token").GetString())));
    }
}
