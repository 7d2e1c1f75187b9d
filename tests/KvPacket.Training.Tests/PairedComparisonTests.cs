using KvPacket.Training.Qa;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>Modes paired with full recompute on the same questions, and the exact McNemar test that says whether a gap is more than luck.</summary>
public class PairedComparisonTests
{
    [Fact]
    public void McNemar_is_the_exact_two_sided_binomial_tail_of_the_discordant_questions()
    {
        Assert.Equal(2.0 / 128, PairedComparison.McNemar(7, 0), 12);            // 7 against 0: 2 · ½^7
        Assert.Equal(2.0 * (1 + 10 + 45) / 1024, PairedComparison.McNemar(8, 2), 12);
        Assert.Equal(PairedComparison.McNemar(8, 2), PairedComparison.McNemar(2, 8));
        Assert.Equal(1, PairedComparison.McNemar(0, 0));
        Assert.Equal(1, PairedComparison.McNemar(5, 5));
        Assert.Equal(0, PairedComparison.McNemar(2000, 0));                       // far past 2^-1074: no NaN, no overflow
        Assert.InRange(PairedComparison.McNemar(1500, 1450), 0.33, 0.41);        // the normal approximation: z = 0.90, p ≈ 0.37
        Assert.Throws<ArgumentOutOfRangeException>(() => PairedComparison.McNemar(-1, 3));
    }

    [Fact]
    public void Each_mode_counts_the_questions_only_it_or_only_the_reference_gets_wrong_per_type()
    {
        static QaAnswer Answer(string id, string mode, string type, bool right) =>
            new(id, mode, type, "q", "Vosk", right ? "vosk" : "Tarrel", right ? 1 : 0, 0.01, 0, "");
        QaAnswer[] answers =
        [
            Answer("a", "full", "three-hop", true), Answer("a", "naive", "three-hop", false),
            Answer("b", "full", "three-hop", true), Answer("b", "naive", "three-hop", false),
            Answer("c", "full", "single-hop", false), Answer("c", "naive", "single-hop", true),
            Answer("d", "full", "single-hop", false), Answer("d", "naive", "single-hop", false),   // both wrong: not counted
        ];

        var paired = PairedComparison.Of(answers);

        var threeHop = Assert.Single(paired, p => p.Type == "three-hop");
        Assert.Equal(("naive", "full", 2, 2, 0), (threeHop.Mode, threeHop.Reference, threeHop.Questions, threeHop.OnlyModeWrong, threeHop.OnlyReferenceWrong));
        Assert.Equal(0.5, threeHop.PValue, 12);
        var all = Assert.Single(paired, p => p.Type == "all");
        Assert.Equal((4, 2, 1), (all.Questions, all.OnlyModeWrong, all.OnlyReferenceWrong));
        Assert.DoesNotContain(paired, p => p.Type == "bridge");                 // no bridge questions were asked
        Assert.Empty(PairedComparison.Of(answers.Where(a => a.Mode != "full").ToList()));
    }
}
