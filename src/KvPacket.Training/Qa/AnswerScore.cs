using System.Text;

namespace KvPacket.Training.Qa;

/// <summary>
/// SQuAD's answer metrics: exact match and token F1 after normalisation (lower case, punctuation and the articles a, an,
/// the removed, whitespace collapsed), and KVLink's accuracy: the normalised gold answer is contained in the prediction.
/// </summary>
public static class AnswerScore
{
    /// <summary>SQuAD normalisation.</summary>
    public static string Normalise(string text)
    {
        var s = new StringBuilder(text.Length);
        foreach (char c in text.ToLowerInvariant()) s.Append(char.IsPunctuation(c) || char.IsSymbol(c) ? ' ' : c);
        return string.Join(' ', s.ToString().Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(w => w is not ("a" or "an" or "the")));
    }

    /// <summary>1 when the normalised texts are equal.</summary>
    public static double ExactMatch(string prediction, string gold) => Normalise(prediction) == Normalise(gold) ? 1 : 0;

    /// <summary>Harmonic mean of token precision and recall over the normalised texts' words (bag of words).</summary>
    public static double F1(string prediction, string gold)
    {
        var p = Normalise(prediction).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var g = Normalise(gold).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (p.Length == 0 || g.Length == 0) return p.Length == g.Length ? 1 : 0;
        var remaining = g.GroupBy(w => w).ToDictionary(x => x.Key, x => x.Count());
        int common = 0;
        foreach (string w in p)
            if (remaining.TryGetValue(w, out int n) && n > 0) { common++; remaining[w] = n - 1; }
        if (common == 0) return 0;
        double precision = (double)common / p.Length, recall = (double)common / g.Length;
        return 2 * precision * recall / (precision + recall);
    }

    /// <summary>1 when the normalised gold answer occurs in the normalised prediction.</summary>
    public static double Contains(string prediction, string gold)
    {
        string g = Normalise(gold);
        return g.Length > 0 && $" {Normalise(prediction)} ".Contains($" {g} ", StringComparison.Ordinal) ? 1 : 0;
    }
}
