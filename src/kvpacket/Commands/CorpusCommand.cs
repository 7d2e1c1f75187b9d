using System.CommandLine;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket corpus</c>: writes the seeded multi-document QA benchmark (train / validation / test JSONL over invented
/// worlds: one fixed world per held-out split, a fresh small world per training example, names disjoint).
/// </summary>
internal static class CorpusCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Directory for train.jsonl, validation.jsonl and test.jsonl", Required = true };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the worlds and the examples", DefaultValueFactory = _ => 1UL };
        var train = new Option<int>("--train") { Description = "Training examples", DefaultValueFactory = _ => 20000 };
        var validation = new Option<int>("--validation") { Description = "Validation examples", DefaultValueFactory = _ => 1000 };
        var test = new Option<int>("--test") { Description = "Test examples", DefaultValueFactory = _ => 2000 };
        var minDocuments = new Option<int>("--min-documents") { Description = "Fewest documents per example", DefaultValueFactory = _ => 4 };
        var maxDocuments = new Option<int>("--max-documents") { Description = "Most documents per example", DefaultValueFactory = _ => 10 };
        var minTrainDocuments = new Option<int>("--min-train-documents") { Description = "Fewest documents per training example", DefaultValueFactory = _ => 1 };
        var trainQuestions = new Option<int>("--train-questions") { Description = "Most questions per training example (follow-ups asked only where its documents answer them)", DefaultValueFactory = _ => 1 };
        var reasoning = new Option<bool>("--reasoning") { Description = "Multi-hop questions also carry what they follow from (a comparison's two values, the entities a bridge or three-hop chain passes through), stated before the answer in training targets (every other field unchanged)" };
        var command = new Command("corpus", "Write the multi-document QA benchmark (single-hop, bridge, comparison, three-hop) as JSONL splits")
        {
            output, seed, train, validation, test, minDocuments, maxDocuments, minTrainDocuments, trainQuestions, reasoning,
        };
        command.SetAction(parse =>
        {
            string directory = parse.GetValue(output)!;
            QaBenchmark.WriteSplits(directory, parse.GetValue(seed), parse.GetValue(train), parse.GetValue(validation), parse.GetValue(test),
                parse.GetValue(minDocuments), parse.GetValue(maxDocuments), parse.GetValue(minTrainDocuments), parse.GetValue(trainQuestions), parse.GetValue(reasoning));
            foreach (string split in new[] { "train", "validation", "test" })
            {
                string path = Path.Combine(directory, split + ".jsonl");
                Console.WriteLine($"{path}: {File.ReadLines(path).Count()} examples, {new FileInfo(path).Length / 1e6:F1} MB");
            }
            return 0;
        });
        return command;
    }
}
