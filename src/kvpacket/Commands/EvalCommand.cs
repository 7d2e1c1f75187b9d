using System.CommandLine;
using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Store;
using KvPacket.Training;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket eval</c>: every mode against full recompute on the same held-out requests. With no text corpus here,
/// documents are stories the model itself samples from fixed seeds, the query is the start of a further story, and the
/// continuation is what full context predicts greedily.
/// </summary>
internal static class EvalCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var requests = new Option<int>("--requests") { Description = "Held-out requests", DefaultValueFactory = _ => 8 };
        var documents = new Option<int>("--documents") { Description = "Documents per request", DefaultValueFactory = _ => 3 };
        var documentTokens = new Option<int>("--document-tokens") { Description = "Tokens per document", DefaultValueFactory = _ => 64 };
        var continuation = new Option<int>("--continuation") { Description = "Continuation tokens scored per request", DefaultValueFactory = _ => 16 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the generated documents (keep it apart from training seeds)", DefaultValueFactory = _ => 9000UL };
        var output = new Option<string>("--out") { Description = "JSON result path", DefaultValueFactory = _ => Path.Combine("benchmarks", "results", "eval.json") };
        var train = new Option<bool>("--train-adapters") { Description = "First train the KV Packet header/trailer (4+4) by distillation on stories from other seeds" };
        var trainSteps = new Option<int>("--train-steps") { Description = "Distillation steps (one example each)", DefaultValueFactory = _ => 200 };
        var learningRate = new Option<double>("--learning-rate") { Description = "Peak learning rate", DefaultValueFactory = _ => 0.003 };
        var header = new Option<int>("--header") { Description = "Header soft tokens of the trained adapter", DefaultValueFactory = _ => 4 };
        var trailer = new Option<int>("--trailer") { Description = "Trailer soft tokens of the trained adapter", DefaultValueFactory = _ => 4 };
        var command = new Command("eval", "Compare every RAG mode with full recompute: KL, top-1 agreement, TTFT, document FLOPs, KV bytes")
        {
            model, requests, documents, documentTokens, continuation, seed, output, train, trainSteps, learningRate, header, trailer,
        };
        command.SetAction(parse =>
        {
            using var checkpoint = CheckpointLoader.Load(parse.GetValue(model)!);
            int docs = parse.GetValue(documents), docTokens = parse.GetValue(documentTokens), count = parse.GetValue(requests);
            using var transformer = new Transformer(checkpoint, new TransformerOptions
            {
                KvType = DType.F32,
                KvCacheTokens = 4 * (docs + 2) * (docTokens + 64) * count,
                MaxBatchTokens = 256,
            });
            var generator = new Generator(transformer);
            ulong next = parse.GetValue(seed);
            int[] Story(int length)
            {
                var story = new List<int>();
                generator.Generate([checkpoint.Config.BosTokenId ?? 1],
                    new GenerationOptions { MaxNewTokens = length, StopTokens = [], Sampling = new SamplingOptions { Temperature = 1f, Seed = next++ } }, story.Add);
                return [.. story];
            }
            var set = Enumerable.Range(0, count).Select(_ => new RagRequest([checkpoint.Config.BosTokenId ?? 1],
                Enumerable.Range(0, docs).Select(_ => Story(docTokens)).ToArray(), Story(8))).ToArray();

            int hidden = checkpoint.Config.HiddenSize;
            var adapter = Adapter.Untrained("untrained", hidden, 4, 4, 4);
            int tokens = parse.GetValue(continuation);
            var scores = new List<ModeScore>();
            string adapters = "UNTRAINED (zeros)";
            if (parse.GetValue(train))
            {
                // Training stories come from seeds 100…, far from the held-out ones (9000…).
                next = 100;
                // As at evaluation: independent stories as documents, the start of another story as the query, and the
                // continuation the full context would produce after it (greedy), so the teacher's rows are the scored ones.
                int[] prefix = [checkpoint.Config.BosTokenId ?? 1];
                using var full = new RagEngine(transformer);
                var examples = Enumerable.Range(0, 32).Select(_ =>
                {
                    int[][] documents = [.. Enumerable.Range(0, docs).Select(_ => Story(docTokens))];
                    int[] query = Story(8);
                    var (greedy, _) = ModeEvaluation.GreedyContinuation(transformer, full, new RagRequest(prefix, documents, query), 8);
                    return DistillationExample.Create(transformer, prefix, documents, [.. query, .. greedy]);
                }).ToArray();
                int steps = parse.GetValue(trainSteps);
                var distillation = new KvPacketDistillation(checkpoint, new DistillationOptions
                {
                    Header = parse.GetValue(header), Trailer = parse.GetValue(trailer), Steps = steps, LearningRate = parse.GetValue(learningRate), WarmupSteps = Math.Max(1, steps / 10), Seed = 1,
                });
                var initial = distillation.Initial();
                using (var engine = new RagEngine(transformer) { Adapter = initial })
                    scores.AddRange(ModeEvaluation.Run(transformer, engine, set, [RagMode.KvPacket], tokens, "BOS-initialised adapter"));
                var clock = System.Diagnostics.Stopwatch.StartNew();
                double recent = 0;
                var trained = distillation.Train(examples, (step, loss, rate) =>
                {
                    recent += loss;
                    if ((step + 1) % 20 != 0) return;
                    double perStep = clock.Elapsed.TotalSeconds / (step + 1);
                    Console.Error.WriteLine($"  step {step + 1}/{steps}: mean loss {recent / 20:F4}, lr {rate:F4}, {perStep:F2} s/step, ETA {perStep * (steps - step - 1):F0} s");
                    recent = 0;
                });
                Console.Error.WriteLine($"  trained in {clock.Elapsed.TotalSeconds:F1} s ({steps / clock.Elapsed.TotalSeconds:F2} examples/s)");
                adapter = trained with { Links = new float[4 * hidden] };
                adapters = $"KV Packet header/trailer TRAINED ({parse.GetValue(header)}+{parse.GetValue(trailer)}, {steps} steps, 32 training examples); KVLink links untrained (zeros)";
            }
            using (var engine = new RagEngine(transformer) { Adapter = adapter, EpicRecomputeTokens = 8 })
                scores.AddRange(ModeEvaluation.Run(transformer, engine, set, Enum.GetValues<RagMode>(), tokens));

            // KV compression: the packet modes again, with int8 pages read back from a store, and token-pruned to half.
            RagMode[] packetModes = [RagMode.Naive, RagMode.KvPacket, RagMode.KvLink];
            string storePath = Path.Combine(Path.GetTempPath(), $"kvpacket-eval-{Environment.ProcessId}");
            try
            {
                using var store = PacketStore.Open(storePath);
                using var int8 = new StoredPackets(transformer, store, KvStorage.Int8);
                using (var engine = new RagEngine(transformer, int8) { Adapter = adapter })
                    scores.AddRange(ModeEvaluation.Run(transformer, engine, set, packetModes, tokens, "int8 pages"));
            }
            finally { if (Directory.Exists(storePath)) Directory.Delete(storePath, recursive: true); }
            using (var pruned = new BuiltPackets(transformer, keep: 0.5))
            using (var engine = new RagEngine(transformer, pruned) { Adapter = adapter })
                scores.AddRange(ModeEvaluation.Run(transformer, engine, set, packetModes, tokens, "pruned to 50%"));

            Console.WriteLine($"{count} requests × {docs} documents × {docTokens} tokens, {tokens} continuation tokens; adapters {adapters}");
            ModeTable.Print(scores);
            string path = parse.GetValue(output)!;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            File.WriteAllText(path, JsonSerializer.Serialize(new { model = Path.GetFileName(parse.GetValue(model)), adapters, scores = scores.Select(ModeTable.ToJson) },
                new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        });
        return command;
    }
}
