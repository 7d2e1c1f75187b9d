using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Sampling;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket generate</c>: stream tokens from a checkpoint.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Prompt text (needs a tokenizer next to the weights)" };
        var tokens = new Option<string?>("--tokens") { Description = "Prompt as comma-separated token ids, e.g. 1,306,462" };
        var count = new Option<int>("-n", "--max-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temperature", "-t") { Description = "0 for greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "Keep the K most likely tokens (0: all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 42UL };
        var kvType = CommonOptions.KvType();
        var threads = CommonOptions.Threads();
        var trace = new Option<string?>("--trace") { Description = "Write a Chrome / Perfetto trace of the prefill and every decode step here" };
        var command = new Command("generate", "Generate tokens from a prompt, streaming them as they are chosen")
        {
            model, prompt, tokens, count, temperature, topK, topP, seed, kvType, threads, trace,
        };
        command.SetAction(parse =>
        {
            string path = parse.GetValue(model)!;
            using var checkpoint = CheckpointLoader.Load(path);
            var tokenizer = TokenizerLoader.TryLoadNextTo(path);
            int[] promptTokens = PromptTokens(parse.GetValue(prompt), parse.GetValue(tokens), checkpoint.Config.BosTokenId, tokenizer);
            int n = parse.GetValue(count);
            using var transformer = new Transformer(checkpoint, new TransformerOptions
            {
                KvType = parse.GetValue(kvType),
                Threads = parse.GetValue(threads),
                KvCacheTokens = Math.Min(checkpoint.Config.MaxContextLength, promptTokens.Length + n + 16),
            });
            var options = new GenerationOptions
            {
                MaxNewTokens = n,
                Sampling = new SamplingOptions
                {
                    Temperature = parse.GetValue(temperature),
                    TopK = parse.GetValue(topK),
                    TopP = parse.GetValue(topP),
                    Seed = parse.GetValue(seed),
                },
            };
            var recorder = parse.GetValue(trace) is null ? null : new Core.Diagnostics.TraceRecorder(trackNames: "generate");
            var generator = new Generator(transformer) { Trace = recorder };
            GenerationStats stats;
            if (tokenizer is null)
            {
                Console.Write(string.Join(' ', promptTokens));
                stats = generator.Generate(promptTokens, options, token => Console.Write($" {token}"));
            }
            else
            {
                var stream = new TokenStreamDecoder(tokenizer);
                var text = new char[1024];
                Console.Write(tokenizer.Decode(promptTokens));
                stats = generator.Generate(promptTokens, options, token =>
                {
                    if (token < tokenizer.VocabSize) Console.Out.Write(text, 0, stream.Append(token, text));
                });
                Console.Out.Write(text, 0, stream.Flush(text));
            }
            Console.WriteLine();
            recorder?.WriteChromeTrace(parse.GetValue(trace)!);
            Console.Error.WriteLine($"prefill: {stats.PromptTokens} tokens, {stats.PrefillTokensPerSecond:F1} tokens/s; " +
                                    $"decode: {stats.GeneratedTokens} tokens, {stats.DecodeTokensPerSecond:F1} tokens/s ({transformer.ThreadCount} threads)");
            return 0;
        });
        return command;
    }

    private static int[] PromptTokens(string? text, string? ids, int? bos, ITokenizer? tokenizer)
    {
        if (ids is not null)
        {
            try
            {
                return ids.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray();
            }
            catch (FormatException)
            {
                throw new ArgumentException($"--tokens must be comma-separated integers, got '{ids}'.");
            }
        }
        if (text is not null)
        {
            if (tokenizer is null) throw new ArgumentException("No tokenizer.json or tokenizer.model sits next to these weights: give the prompt as --tokens ids.");
            var encoded = tokenizer.Encode(text);
            return bos is { } first ? [first, .. encoded] : encoded;
        }
        return bos is { } b ? [b] : throw new ArgumentException("Give --tokens (the model has no BOS token to start from).");
    }
}
