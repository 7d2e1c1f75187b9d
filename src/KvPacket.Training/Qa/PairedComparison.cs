namespace KvPacket.Training.Qa;

/// <summary>
/// One mode against a reference mode on the same questions: how many questions only this mode answers wrongly (not an
/// exact match), how many only the reference does, and the exact two-sided McNemar p-value of that split — whether a gap
/// is larger than which questions happened to be drawn could make it. Questions both answer alike say nothing about the
/// difference and do not count.
/// </summary>
public sealed record PairedComparison(string Mode, string Reference, string Type, int Questions, int OnlyModeWrong, int OnlyReferenceWrong, double PValue)
{
    /// <summary>
    /// Every other mode of <paramref name="answers"/> against <paramref name="reference"/>, per question type and over all
    /// ("all"), on the questions both answered; empty when the reference was not run.
    /// </summary>
    public static IReadOnlyList<PairedComparison> Of(IReadOnlyList<QaAnswer> answers, string reference = "full")
    {
        var referenceRight = answers.Where(a => a.Mode == reference).ToDictionary(a => a.Id, IsRight);
        var comparisons = new List<PairedComparison>();
        if (referenceRight.Count == 0) return comparisons;
        foreach (string mode in answers.Select(a => a.Mode).Distinct().Where(m => m != reference))
            foreach (string type in QaBenchmark.Types.Append("all"))
            {
                int questions = 0, onlyMode = 0, onlyReference = 0;
                foreach (var answer in answers)
                {
                    if (answer.Mode != mode || (type != "all" && answer.Type != type) || !referenceRight.TryGetValue(answer.Id, out bool right)) continue;
                    questions++;
                    bool modeRight = IsRight(answer);
                    if (right && !modeRight) onlyMode++;
                    else if (modeRight && !right) onlyReference++;
                }
                if (questions > 0) comparisons.Add(new PairedComparison(mode, reference, type, questions, onlyMode, onlyReference, McNemar(onlyMode, onlyReference)));
            }
        return comparisons;
    }

    /// <summary>
    /// Exact two-sided McNemar test: under "the modes are as good", each of the b + c discordant questions is a fair
    /// coin, so p is twice the binomial(b + c, ½) tail at min(b, c), at most 1. Summed in logarithms: 2^-n underflows
    /// past n ≈ 1,074.
    /// </summary>
    public static double McNemar(int onlyModeWrong, int onlyReferenceWrong)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(onlyModeWrong);
        ArgumentOutOfRangeException.ThrowIfNegative(onlyReferenceWrong);
        int n = onlyModeWrong + onlyReferenceWrong, k = Math.Min(onlyModeWrong, onlyReferenceWrong);
        double logTerm = -n * Math.Log(2), tail = 0;   // log C(n, 0) / 2^n
        for (int j = 0; j <= k; j++)
        {
            tail += Math.Exp(logTerm);
            logTerm += Math.Log(n - j) - Math.Log(j + 1);   // C(n, j + 1) = C(n, j) · (n − j) / (j + 1)
        }
        return Math.Min(1, 2 * tail);
    }

    private static bool IsRight(QaAnswer answer) => AnswerScore.ExactMatch(answer.Prediction, answer.Gold) == 1;
}
