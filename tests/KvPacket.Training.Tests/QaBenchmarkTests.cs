using System.Text.Json;
using KvPacket.Training.Qa;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>The multi-document QA benchmark: seeded, entity-disjoint splits, answerable from the gold documents.</summary>
public class QaBenchmarkTests
{
    private static string Serialize(IEnumerable<QaExample> examples) => string.Join("\n", examples.Select(e => JsonSerializer.Serialize(e)));

    [Fact]
    public void The_same_seed_gives_the_same_examples_and_another_seed_others()
    {
        var (_, a, reservedA) = QaBenchmark.HeldOutWorlds(5);
        var (_, b, _) = QaBenchmark.HeldOutWorlds(5);
        var (_, c, _) = QaBenchmark.HeldOutWorlds(6);

        Assert.Equal(Serialize(QaBenchmark.Generate(a, "test", 9, 40)), Serialize(QaBenchmark.Generate(b, "test", 9, 40)));
        Assert.NotEqual(Serialize(QaBenchmark.Generate(a, "test", 9, 40)), Serialize(QaBenchmark.Generate(c, "test", 9, 40)));
        Assert.NotEqual(Serialize(QaBenchmark.Generate(a, "test", 9, 40)), Serialize(QaBenchmark.Generate(a, "test", 10, 40)));
        Assert.Equal(Serialize(QaBenchmark.GenerateTraining(3, reservedA, 30)), Serialize(QaBenchmark.GenerateTraining(3, reservedA, 30)));
    }

    [Fact]
    public void Held_out_worlds_share_no_entity_and_training_examples_use_none_of_their_names()
    {
        var (validation, test, reserved) = QaBenchmark.HeldOutWorlds(1);
        static HashSet<string> Names(QaWorld w) =>
            [.. w.Regions, .. w.Cities.Select(c => c.Name), .. w.Organisations.Select(o => o.Name.Split(' ')[0]), .. w.People.SelectMany(p => p.Name.Split(' '))];
        Assert.Empty(Names(validation).Intersect(Names(test)));
        Assert.True(Names(test).Count > 400, $"{Names(test).Count} names");

        var words = new HashSet<string>(QaBenchmark.GenerateTraining(1, reserved, 400)
            .SelectMany(e => e.Documents.Select(d => d.Text).Append(e.Question).Append(e.Answers[0]))
            .SelectMany(t => t.Split([' ', '.', ',', '?', '\''], StringSplitOptions.RemoveEmptyEntries)));
        Assert.Empty(words.Intersect(Names(test)));
        Assert.Empty(words.Intersect(Names(validation)));
    }

    [Fact]
    public void Training_examples_each_have_a_world_of_their_own()
    {
        var (_, _, reserved) = QaBenchmark.HeldOutWorlds(2);
        var examples = QaBenchmark.GenerateTraining(2, reserved, 50).ToList();
        // The same entity name in two examples would let facts be learned by heart; fresh worlds make that rare.
        var titles = examples.SelectMany(e => e.Documents.Select(d => d.Title).Distinct()).ToList();
        Assert.True(titles.Distinct().Count() >= titles.Count * 0.98, $"{titles.Count - titles.Distinct().Count()} repeated titles");
        Assert.InRange(examples.Min(e => e.Documents.Length), 1, 3);
    }

    [Fact]
    public void Every_answer_is_in_its_gold_documents_and_every_example_has_the_documents_its_type_needs()
    {
        var (_, test, _) = QaBenchmark.HeldOutWorlds(2);
        var examples = QaBenchmark.Generate(test, "test", 3, 400, minDocuments: 4, maxDocuments: 10).ToList();
        var goldCount = new Dictionary<string, int> { ["single-hop"] = 1, ["bridge"] = 2, ["comparison"] = 2, ["three-hop"] = 3 };

        foreach (var e in examples)
        {
            Assert.InRange(e.Documents.Length, 4, 10);
            Assert.Equal(goldCount[e.Type], e.Gold.Length);
            Assert.Equal(e.Gold.Length, e.Gold.Distinct().Count());
            string gold = string.Join(" ", e.Gold.Select(g => e.Documents[g].Text));
            Assert.Contains(e.Answers[0], gold);
            Assert.Equal(e.Documents.Length, e.Documents.Select(d => d.Title).Distinct().Count());
        }
        Assert.Equal(QaBenchmark.Types.OrderBy(t => t), examples.Select(e => e.Type).Distinct().OrderBy(t => t));
        Assert.True(examples.Select(e => e.Relation).Distinct().Count() >= 20, "relations asked");
        Assert.True(examples.Select(e => e.Question).Distinct().Count() >= examples.Count * 0.98, "questions are rarely asked twice");
    }

    [Fact]
    public void Follow_up_questions_are_answered_by_their_gold_documents_and_leave_the_first_question_as_it_was()
    {
        var (_, _, reserved) = QaBenchmark.HeldOutWorlds(5);
        var single = QaBenchmark.GenerateTraining(5, reserved, 200).ToList();
        var asked = QaBenchmark.GenerateTraining(5, reserved, 200, questions: 4).ToList();
        Assert.Equal(single.Select(e => (e.Question, e.Answers[0], e.Documents.Length)), asked.Select(e => (e.Question, e.Answers[0], e.Documents.Length)));
        var followUps = asked.SelectMany(e => (e.FollowUps ?? []).Select(f => (Example: e, FollowUp: f))).ToList();
        Assert.True(followUps.Count >= 400, $"{followUps.Count} follow-ups over 200 lines");
        Assert.True(followUps.Select(f => f.FollowUp.Type).Distinct().Count() == 4, "every type is asked as a follow-up");
        foreach (var (example, followUp) in followUps)
        {
            Assert.NotEqual(example.Question, followUp.Question);
            Assert.Contains(followUp.Answers[0], string.Join(" ", followUp.Gold.Select(g => example.Documents[g].Text)));
        }
    }

    [Fact]
    public void A_multi_hop_answer_is_rarely_in_the_document_of_the_entity_the_question_names()
    {
        var (_, _, reserved) = QaBenchmark.HeldOutWorlds(4);
        var asked = QaBenchmark.GenerateTraining(4, reserved, 800).Where(e => e.Relation == "person.employer.founder.birthplace").ToList();
        // The question names the person; only the founder's document says where the founder was born (in a world of
        // eight cities the person may share the birthplace by chance).
        int inPersonDocument = asked.Count(e => e.Documents.First(d => e.Question.Contains(d.Title)).Text.Contains(e.Answers[0]));
        Assert.True(asked.Count >= 10);
        Assert.True(inPersonDocument <= asked.Count * 0.3, $"{inPersonDocument} of {asked.Count}");
    }

    [Fact]
    public void Reasoning_states_comparison_values_and_hop_entities_changes_nothing_else_and_the_answer_is_taken_back_out()
    {
        var (_, _, reserved) = QaBenchmark.HeldOutWorlds(6);
        var plain = QaBenchmark.GenerateTraining(6, reserved, 200, questions: 3).ToList();
        var reasoned = QaBenchmark.GenerateTraining(6, reserved, 200, questions: 3, reasoning: true).ToList();
        Assert.Equal(Serialize(plain), Serialize(reasoned.Select(e => e with { Reasoning = null, FollowUps = e.FollowUps?.Select(f => f with { Reasoning = null }).ToArray() })));

        var asked = reasoned.Select(e => (e.Type, e.Question, e.Answers, e.Documents, e.Gold, e.Reasoning))
            .Concat(reasoned.SelectMany(e => (e.FollowUps ?? []).Select(f => (f.Type, f.Question, f.Answers, e.Documents, f.Gold, f.Reasoning)))).ToList();
        Assert.True(asked.Count(a => a.Type == "comparison") >= 80);
        Assert.True(asked.Count(a => a.Type is "bridge" or "three-hop") >= 100);
        foreach (var (type, question, answers, documents, gold, reasoning) in asked)
        {
            if (type == "single-hop") { Assert.Null(reasoning); continue; }
            Assert.Equal(answers[0], QaPrompt.FinalAnswer(QaPrompt.AnswerText(answers[0], reasoning).Trim()));
            Assert.Equal(reasoning, QaPrompt.StatedReasoning(QaPrompt.AnswerText(answers[0], reasoning)));
            if (type != "comparison")
            {
                // The entities between the question's and the answer, in order: each the title of a gold document that the
                // document before it in the chain names, and the last one's document states the answer.
                string[] hops = reasoning!.Split("; ");
                Assert.Equal(gold.Length - 1, hops.Length);
                var start = documents[gold.Single(g => question.Contains(documents[g].Title, StringComparison.Ordinal))];
                var chain = hops.Select(h => documents[gold.Single(g => documents[g].Title == h)]).Prepend(start).ToArray();
                for (int h = 1; h < chain.Length; h++) Assert.Contains(chain[h].Title, chain[h - 1].Text, StringComparison.Ordinal);
                Assert.Contains(answers[0], chain[^1].Text, StringComparison.Ordinal);
                continue;
            }
            // "{x}: {value}; {y}: {value}" in the question's order, each value stated in that candidate's gold document.
            var parts = reasoning!.Split("; ").Select(p => p.Split(": ")).ToArray();
            Assert.Equal(2, parts.Length);
            Assert.True(question.IndexOf(parts[0][0], StringComparison.Ordinal) < question.IndexOf(parts[1][0], StringComparison.Ordinal), question);
            foreach (var part in parts) Assert.Contains(gold, g => documents[g].Title == part[0] && documents[g].Text.Contains(part[1], StringComparison.Ordinal));
            long first = long.Parse(parts[0][1]), second = long.Parse(parts[1][1]);
            bool larger = question.Contains("inhabitants", StringComparison.Ordinal) || question.Contains("population", StringComparison.Ordinal);
            Assert.Equal(larger == first > second ? parts[0][0] : parts[1][0], answers[0]);
        }
        Assert.Equal("Ada Vell", QaPrompt.FinalAnswer(" Ada Vell "));
        Assert.Null(QaPrompt.StatedReasoning(" Ada Vell"));
        Assert.Equal(" Ada Vell", QaPrompt.AnswerText("Ada Vell"));
    }

    [Fact]
    public void Splits_written_as_jsonl_read_back()
    {
        using var temp = KvPacket.Tests.Fixtures.TempDirectory();
        QaBenchmark.WriteSplits(temp.Path, seed: 7, train: 12, validation: 4, test: 8);
        var test = QaBenchmark.Read(Path.Combine(temp.Path, "test.jsonl")).ToList();
        Assert.Equal(8, test.Count);
        Assert.Equal(12, QaBenchmark.Read(Path.Combine(temp.Path, "train.jsonl")).Count());
        Assert.StartsWith("test-", test[0].Id);
        Assert.Contains("\"answers\":", File.ReadLines(Path.Combine(temp.Path, "test.jsonl")).First());
    }
}

/// <summary>QA questions as adapter-distillation examples: packets, continuation and scored rows.</summary>
public class QaDistillationTests
{
    [Fact]
    public void A_question_becomes_packets_and_a_continuation_scored_from_the_row_that_predicts_the_answer()
    {
        using var temp = KvPacket.Tests.Fixtures.TempDirectory();
        var tokenizer = Core.Tokenization.ByteLevelBpeTokenizer.LoadHuggingFace(KvPacket.Tests.Fixtures.PathOf("bpe-gpt2/tokenizer.json"));
        var config = Core.Model.ModelCard.Find("stories260k").Config with { LayerCount = 1, VocabSize = tokenizer.VocabSize, MaxContextLength = 2048, BosTokenId = null, EosTokenIds = [] };
        TrainedCheckpoint.WriteHuggingFace(config, WeightInitialisation.Random(config, seed: 2), temp.Path, Core.Memory.DType.F32);
        using var checkpoint = Core.Checkpoints.CheckpointLoader.Load(temp.Path);
        using var model = new Engine.Forward.Transformer(checkpoint, new Engine.Forward.TransformerOptions { KvType = Core.Memory.DType.F32, KvCacheTokens = 4096 });
        var (_, test, _) = QaBenchmark.HeldOutWorlds(3);
        var question = QaBenchmark.Generate(test, "test", 1, 1).Single();

        var example = QaDistillation.Examples(model, tokenizer, [question]).Single();

        int[] asked = QaPrompt.Question(tokenizer, question.Question), answer = QaPrompt.Answer(tokenizer, question.Answers[0]);
        Assert.Equal(question.Documents.Length, example.Documents.Length);
        Assert.Equal(QaPrompt.Document(tokenizer, question.Documents[0]), example.Documents[0]);
        Assert.Equal([.. asked, .. answer], example.Continuation);
        Assert.Equal(asked.Length - 1, example.FirstScoredRow);   // the row after "Answer:" predicts the answer's first token
        Assert.Equal(example.Continuation.Length * config.VocabSize, example.Teacher.Length);
        Assert.Equal(example.Continuation.Length, example.Teacher.Chunk(config.VocabSize).Count(row => Math.Abs(row.Sum() - 1) < 1e-3));
    }
}
