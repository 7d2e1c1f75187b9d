using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket demo</c>: the main job on an embedded default. Until our own trained default model exists this is a
/// seeded random-weight model at the stories260K shape, written to a temporary directory and run end to end:
/// checkpoint writer, reader, batched forward over paged KV, greedy and sampled generation, and one RAG request with
/// its documents as packets in every mode.
/// </summary>
internal static class DemoCommand
{
    /// <summary>One RAG request (four 96-token documents and a query) in every mode: what each computes at query time.</summary>
    private static void ShowPackets(Transformer model, int hidden)
    {
        var random = new SeededRandom(3);
        int[] Tokens(int n) => random.NextTokens(n, 3, 512);
        var request = new RagRequest([1], Enumerable.Range(0, 4).Select(_ => Tokens(96)).ToArray(), Tokens(12));
        using var engine = new RagEngine(model) { Adapter = Adapter.Untrained("untrained", hidden, 4, 4, 4), EpicRecomputeTokens = 8 };
        Console.WriteLine("RAG request: 4 documents × 96 tokens as packets + a 12-token query (adapters untrained):");
        foreach (var mode in Enum.GetValues<RagMode>())
        {
            engine.Prefill(request, mode).Sequence.Dispose(); // builds the packets and warms up, outside the figures
            var result = engine.Prefill(request, mode);
            result.Sequence.Dispose();
            Console.WriteLine($"  {mode,-10} TTFT {result.TimeToFirstTokenSeconds * 1e3,7:F2} ms   prefilled {result.PrefilledTokens,4} tokens   document FLOPs {result.DocumentFlops / 1e6,7:F1} M");
        }
    }

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
                using var transformer = new Transformer(checkpoint, new TransformerOptions { KvCacheTokens = 4 * (n + 32) + 4096 });
                var generator = new Generator(transformer);
                foreach (var sampling in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = 7 } })
                {
                    Console.Write(sampling.Temperature == 0 ? "greedy:  1" : "sampled: 1");
                    var stats = generator.Generate([1], new GenerationOptions { MaxNewTokens = n, StopTokens = [], Sampling = sampling }, t => Console.Write($" {t}"));
                    Console.WriteLine();
                    Console.WriteLine($"         {stats.GeneratedTokens} tokens, decode {stats.DecodeTokensPerSecond:N0} tokens/s");
                }
                ShowPackets(transformer, checkpoint.Config.HiddenSize);
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
