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
        var (a, _, _) = QaBenchmark.Worlds(5);
        var (b, _, _) = QaBenchmark.Worlds(5);
        var (c, _, _) = QaBenchmark.Worlds(6);

        Assert.Equal(Serialize(QaBenchmark.Generate(a, "train", 9, 40)), Serialize(QaBenchmark.Generate(b, "train", 9, 40)));
        Assert.NotEqual(Serialize(QaBenchmark.Generate(a, "train", 9, 40)), Serialize(QaBenchmark.Generate(c, "train", 9, 40)));
        Assert.NotEqual(Serialize(QaBenchmark.Generate(a, "train", 9, 40)), Serialize(QaBenchmark.Generate(a, "train", 10, 40)));
    }

    [Fact]
    public void The_splits_share_no_entity()
    {
        var (train, validation, test) = QaBenchmark.Worlds(1);
        static HashSet<string> Names(QaWorld w) =>
        [
            .. w.Regions, .. w.Cities.Select(c => c.Name), .. w.Organisations.Select(o => o.Name), .. w.Works.Select(k => k.Title),
            .. w.People.SelectMany(p => p.Name.Split(' ')),
        ];
        var a = Names(train);
        var b = Names(validation);
        var c = Names(test);
        Assert.Empty(a.Intersect(b));
        Assert.Empty(a.Intersect(c));
        Assert.Empty(b.Intersect(c));
        Assert.True(a.Count > 900, $"{a.Count} names");
    }

    [Fact]
    public void Every_answer_is_in_its_gold_documents_and_every_example_has_the_documents_its_type_needs()
    {
        var (_, _, test) = QaBenchmark.Worlds(2);
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
    public void A_multi_hop_answer_needs_more_than_the_entity_the_question_names()
    {
        var (train, _, _) = QaBenchmark.Worlds(4);
        foreach (var e in QaBenchmark.Generate(train, "train", 1, 200).Where(e => e.Relation == "person.employer.founder.birthplace"))
        {
            // The question names the person; the person's own document never says where the founder was born.
            var person = e.Documents.First(d => e.Question.Contains(d.Title));
            Assert.DoesNotContain("born in the city of " + e.Answers[0], person.Text);
        }
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
