using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Store;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket demo</c>: the main job on the shipped model (models/kvqa-17m, copied beside the binary). Test-split
/// questions of the QA benchmark are generated from their seed; their documents are ingested as packets into a packet
/// store (plain, and with the shipped KV Packet adapter); then, with every packet read back from the store, each
/// question is answered in every mode, printing the answers, their F1 against the gold answer and the time to first token.
/// </summary>
internal static class DemoCommand
{
    /// <summary>The modes shown, in order; closed-book answers with no documents at all.</summary>
    private static readonly string[] Modes = ["full", QaEvaluation.ClosedBook, "naive", "epic", "cacheblend", "kvpacket", "kvlink"];

    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "A QA model directory with its tokenizer and adapters (default: the shipped kvqa-17m)" };
        var questions = new Option<int>("--questions") { Description = "Test-split questions answered (the split's first ones: the four types in turn)", DefaultValueFactory = _ => 8 };
        var device = DeviceOption.Create();
        var command = new Command("demo", "Answer multi-document questions with the shipped QA model in every RAG mode, packets served from a store") { model, questions, device };
        command.SetAction(parse =>
        {
            string modelPath = parse.GetValue(model) ?? ShippedModel.Directory;
            int count = parse.GetValue(questions);
            if (count < 1) throw new ArgumentException("--questions: need at least 1");
            using var checkpoint = CheckpointLoader.Load(modelPath);
            var tokenizer = TokenizerLoader.TryLoadNextTo(modelPath) ?? throw new InvalidDataException($"{modelPath}: no tokenizer.json beside the model");
            var fingerprint = ModelFingerprint.Of(checkpoint);
            int hidden = checkpoint.Config.HiddenSize;
            var adapter = AdapterFile.ReadCombined([Path.Combine(modelPath, ShippedModel.KvPacketAdapter), Path.Combine(modelPath, ShippedModel.KvLinkAdapter)], fingerprint, hidden);
            Console.WriteLine($"model: {Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath))}, {checkpoint.ParameterCount:N0} parameters " +
                              $"({checkpoint.Config.LayerCount} layers × {hidden}, {checkpoint.Config.HeadCount}/{checkpoint.Config.KvHeadCount} heads, vocabulary {checkpoint.Config.VocabSize}); " +
                              $"adapters: KV Packet {adapter.Header.Length / hidden}+{adapter.Trailer.Length / hidden} soft tokens, KVLink {adapter.Links.Length / hidden} links");

            var (_, testWorld, _) = QaBenchmark.HeldOutWorlds(1);
            var examples = QaBenchmark.Generate(testWorld, "test", 3, count).ToList();   // = kvpacket corpus --seed 1: test.jsonl's first lines
            using var backend = DeviceOption.Open(checkpoint, parse.GetValue(device)!, kvTokens: 16384, out string on);
            Console.WriteLine($"on: {on}");
            string storePath = Path.Combine(Path.GetTempPath(), $"kvpacket-demo-{Environment.ProcessId}");
            try
            {
                Ingest(backend, tokenizer, examples, adapter, storePath);
                // A fresh read-only handle, as a server has after a restart: every packet comes from the store, none is rebuilt.
                using var store = PacketStore.Open(storePath, new PacketStoreOptions { ReadOnly = true });
                using var packets = new StoredPackets(backend, store);
                var evaluation = new QaEvaluation(backend, tokenizer, adapter, packets);
                _ = evaluation.Answer(examples[0], "full");   // warm-up: the first prefill pays for the JIT
                var answers = new List<QaAnswer>();
                var refused = new HashSet<string>();   // modes this backend cannot run (the ILGPU backend has no CacheBlend)
                foreach (var example in examples)
                {
                    Console.WriteLine();
                    Console.WriteLine($"[{example.Type}] {example.Question}   ({example.Documents.Length} documents; gold: {example.Answers[0]})");
                    foreach (string mode in Modes)
                    {
                        if (refused.Contains(mode)) continue;
                        QaAnswer answer;
                        try { answer = evaluation.Answer(example, mode); }
                        catch (NotSupportedException e)
                        {
                            refused.Add(mode);
                            Console.WriteLine($"  {mode,-12} not on this backend: {e.Message}");
                            continue;
                        }
                        answers.Add(answer);
                        string because = QaPrompt.StatedReasoning(answer.Generated) is { } reasoning ? $"   from: {OneLine(reasoning)}" : "";
                        Console.WriteLine($"  {mode,-12} {Quoted(answer.Prediction),-28} F1 {answer.F1,4:F2}   TTFT {answer.TtftSeconds * 1e3,6:F1} ms   document FLOPs {answer.DocumentFlops / 1e9,5:F2} G{because}");
                    }
                }
                Console.WriteLine();
                Console.WriteLine($"{examples.Count} questions, {packets.StoreLoads} packet loads ({packets.BytesLoaded / 1e6:F1} MB) from the store, {packets.Builds} rebuilt");
                Console.WriteLine($"{"mode",-12} {"EM",5} {"F1",5} {"TTFT ms",8} {"doc GFLOP",10}");
                foreach (var score in QaEvaluation.Score(answers, [.. Modes.Except(refused)]).Where(s => s.Type == "all"))
                    Console.WriteLine($"{score.Mode,-12} {score.ExactMatch,5:F2} {score.F1,5:F2} {score.MeanTtftSeconds * 1e3,8:F1} {score.MeanDocumentFlops / 1e9,10:F2}");
                return 0;
            }
            finally
            {
                if (Directory.Exists(storePath)) Directory.Delete(storePath, recursive: true);
            }
        });
        return command;
    }

    /// <summary>Every document of <paramref name="examples"/> as a packet, plain and with the KV Packet adapter, durably committed.</summary>
    private static void Ingest(IForwardBackend model, ITokenizer tokenizer, IReadOnlyList<QaExample> examples, Adapter adapter, string storePath)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        using var store = PacketStore.Open(storePath);
        using var packets = new StoredPackets(model, store);
        foreach (var document in examples.SelectMany(e => e.Documents))
        {
            int[] tokens = QaPrompt.Document(tokenizer, document);
            packets.Acquire(tokens, null).Dispose();
            packets.Acquire(tokens, adapter).Dispose();
        }
        var stats = store.Stats();
        Console.WriteLine($"ingested {stats.Packets} packets (the questions' documents, plain and with the KV Packet adapter) into {storePath}: " +
                          $"{stats.LiveBytes / 1e6:F1} MB in {System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds:F1} s, durably committed");
    }

    /// <summary>An answer in the table, cut at 26 characters.</summary>
    private static string Quoted(string answer)
    {
        string text = OneLine(answer);
        return text.Length > 26 ? $"'{text[..23]}...'" : $"'{text}'";
    }

    /// <summary>Generated text on one line of the table: its line breaks shown as \n.</summary>
    private static string OneLine(string text) => text.Replace("\r", "\\r").Replace("\n", "\\n");
}
