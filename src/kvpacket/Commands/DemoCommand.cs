using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Sampling;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket demo</c>: the main job on an embedded default. Until our own trained default model exists this is a
/// seeded random-weight model at the stories260K shape, written to a temporary directory and run end to end:
/// checkpoint writer, reader, batched forward over paged KV, greedy and sampled generation.
/// </summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var count = new Option<int>("-n", "--max-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 64 };
        var command = new Command("demo", "Run generation on an embedded default model (random weights) with nothing to download") { count };
        command.SetAction(parse =>
        {
            int n = parse.GetValue(count);
            var card = ModelCard.Find("stories260k");
            string directory = Path.Combine(Path.GetTempPath(), $"kvpacket-demo-{Environment.ProcessId}");
            try
            {
                SyntheticCheckpoint.Write(card.Config, DType.F32, directory, seed: 2026);
                using var checkpoint = CheckpointLoader.Load(directory);
                Console.WriteLine($"model: {card.Name} shape, RANDOM WEIGHTS (seed 2026) — a stand-in until a trained default ships; output is not language.");
                Console.WriteLine($"       {checkpoint.ParameterCount:N0} parameters, {checkpoint.Config.LayerCount} layers, {checkpoint.Config.HeadCount} heads / {checkpoint.Config.KvHeadCount} KV heads");
                using var transformer = new Transformer(checkpoint, new TransformerOptions { KvCacheTokens = 4 * (n + 32) });
                var generator = new Generator(transformer);
                foreach (var sampling in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = 7 } })
                {
                    Console.Write(sampling.Temperature == 0 ? "greedy:  1" : "sampled: 1");
                    var stats = generator.Generate([1], new GenerationOptions { MaxNewTokens = n, StopTokens = [], Sampling = sampling }, t => Console.Write($" {t}"));
                    Console.WriteLine();
                    Console.WriteLine($"         {stats.GeneratedTokens} tokens, decode {stats.DecodeTokensPerSecond:N0} tokens/s");
                }
                return 0;
            }
            finally
            {
                Directory.Delete(directory, recursive: true);
            }
        });
        return command;
    }
}
