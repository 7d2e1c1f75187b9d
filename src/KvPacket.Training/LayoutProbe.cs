namespace KvPacket.Training;

/// <summary>
/// KL(teacher ‖ student) for fixed, adapter-free student layouts of the same examples, run through the training
/// model's masked sequence: what a model loses without documents, with one document, with separators between them,
/// or with a gap of positions before the query. It says which costs an adapter can win back and which it cannot
/// (rows placed between the last document and the query, as trailers and links are, shift the query's positions).
/// </summary>
public static class LayoutProbe
{
    /// <summary>One probed layout and its mean KL per scored row.</summary>
    public sealed record Result(string Layout, double MeanKl);

    private sealed record Row(int Token, int Segment, bool Global);

    /// <summary>Mean KL of each layout over <paramref name="examples"/>.</summary>
    public static IReadOnlyList<Result> Run(Core.Model.Checkpoint checkpoint, IReadOnlyList<DistillationExample> examples)
    {
        var model = new TrainingModel<float>(checkpoint.Config, TrainingWeights<float>.From(checkpoint));
        int bos = checkpoint.Config.BosTokenId ?? 1;
        (string Name, Func<DistillationExample, List<Row>> Rows, int Gap)[] layouts =
        [
            ("full attention (the teacher; 0 by construction)", e => Build(e, documentsSeeEachOther: true), 0),
            ("no documents", e => Build(e with { Documents = [] }, true), 0),
            ("last document only, in context", e => Build(e with { Documents = [e.Documents[^1]] }, true), 0),
            ("naive (independent documents)", e => Build(e, false), 0),
            ("naive, BOS token before each document", e => Build(e, false, before: bos), 0),
            ("naive, one token (BOS) after each document", e => Build(e, false, after: bos), 0),
            ("naive, query 3 positions further", e => Build(e, false), 3),
        ];
        return [.. layouts.Select(layout => new Result(layout.Name, examples.Average(e => Kl(model, e, layout.Rows(e), layout.Gap, checkpoint.Config.VocabSize))))];
    }

    private static List<Row> Build(DistillationExample example, bool documentsSeeEachOther, int before = -1, int after = -1)
    {
        var rows = example.Prefix.Select(t => new Row(t, 0, true)).ToList();
        for (int d = 0; d < example.Documents.Length; d++)
        {
            int segment = documentsSeeEachOther ? 0 : d + 1;
            if (before >= 0) rows.Add(new Row(before, segment, documentsSeeEachOther));
            rows.AddRange(example.Documents[d].Select(t => new Row(t, segment, documentsSeeEachOther)));
            if (after >= 0) rows.Add(new Row(after, segment, documentsSeeEachOther));
        }
        rows.AddRange(example.Continuation.Select(t => new Row(t, -1, true)));
        return rows;
    }

    private static double Kl(TrainingModel<float> model, DistillationExample example, List<Row> rows, int gap, int vocab)
    {
        int start = rows.Count - example.Continuation.Length;
        int[] positions = [.. Enumerable.Range(0, rows.Count).Select(i => i >= start ? i + gap : i)];
        var logits = model.Forward([.. rows.Select(r => r.Token)], [], positions, (i, j) => j <= i && (rows[i].Global || rows[i].Segment == rows[j].Segment));
        double sum = 0;
        for (int r = example.FirstScoredRow; r < example.Continuation.Length; r++)
            sum += Ops<float>.KlDivergence(example.Teacher.AsSpan(r * vocab, vocab), logits.AsSpan((start + r) * vocab, vocab), default, 1f);
        return sum / example.ScoredRows;
    }
}
