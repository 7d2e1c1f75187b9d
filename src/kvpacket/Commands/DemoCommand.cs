using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Store;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket demo</c>: the main job on an embedded default. Until our own trained default model exists this is a
/// seeded random-weight model at the stories260K shape, written to a temporary directory and run end to end:
/// checkpoint writer, reader, batched forward over paged KV, greedy and sampled generation, documents ingested as
/// packets into a packet store, and one RAG request over them in every mode.
/// </summary>
internal static class DemoCommand
{
    /// <summary>
    /// Ingests four 96-token documents as packets into a packet store, then answers one query over them in every mode
    /// with the packets read back from the store, and prints what each mode costs and how far it is from full recompute.
    /// </summary>
    private static void ShowPackets(Transformer model, int hidden, string directory)
    {
        var random = new SeededRandom(3);
        int[] Tokens(int n) => random.NextTokens(n, 3, 512);
        var request = new RagRequest([1], Enumerable.Range(0, 4).Select(_ => Tokens(96)).ToArray(), Tokens(12));
        var adapter = Adapter.Untrained("untrained", hidden, 4, 4, 4);
        string storePath = Path.Combine(directory, "packets");

        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        using (var store = PacketStore.Open(storePath))
        using (var packets = new StoredPackets(model, store))
        {
            foreach (var document in request.Documents)
            {
                packets.Acquire(document, null).Dispose();
                packets.Acquire(document, adapter).Dispose();
            }
            var stats = store.Stats();
            Console.WriteLine($"ingested {stats.Packets} packets (4 documents, plain and with the KV Packet adapter) into {storePath}: " +
                              $"{stats.LiveBytes / 1e6:F2} MB in {System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds:F0} ms, durably committed");
        }

        // A fresh handle, as a server would have after a restart: every packet comes from the store, nothing is rebuilt.
        using (var store = PacketStore.Open(storePath, new PacketStoreOptions { ReadOnly = true }))
        using (var packets = new StoredPackets(model, store))
        using (var engine = new RagEngine(model, packets) { Adapter = adapter, EpicRecomputeTokens = 8 })
        {
            var modes = Enum.GetValues<RagMode>();
            foreach (var mode in modes) engine.Prefill(request, mode).Sequence.Dispose(); // warm-up, loads packets
            Console.WriteLine($"one RAG request: 4 documents × 96 tokens + a 12-token query, 8 continuation tokens scored (adapters untrained; " +
                              $"{packets.StoreLoads} packet loads, {packets.BytesLoaded / 1e6:F2} MB read from the store, {packets.Builds} rebuilt):");
            ModeTable.Print(ModeEvaluation.Run(model, engine, [request], modes, 8));
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
                ShowPackets(transformer, checkpoint.Config.HiddenSize, directory);
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
