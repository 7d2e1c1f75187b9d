namespace KvPacket.Training;

/// <summary>
/// Sequences laid out as the GPU trainer runs them: <see cref="Sequences"/> × <see cref="Length"/> rows, row-major by
/// sequence. Per row: its source (a token id ≥ 0, or −1 − r for adapter row r), RoPE position, the first row of its
/// own sequence it attends to (it sees [first, itself]), and its loss — a next-token target (cross-entropy) or a row of
/// <see cref="Teacher"/> (KL to the teacher's distribution) — with a weight (0: no loss). Shorter sequences are padded
/// with rows that see only themselves and carry no loss.
/// </summary>
public sealed class TrainingBatch
{
    private TrainingBatch(int sequences, int length)
    {
        Sequences = sequences;
        Length = length;
        int rows = sequences * length;
        Source = new int[rows];
        Positions = new int[rows];
        FirstVisible = new int[rows];
        Targets = new int[rows];
        TeacherRows = new int[rows];
        Weights = new float[rows];
        Array.Fill(Targets, -1);
        Array.Fill(TeacherRows, -1);
        for (int r = 0; r < rows; r++) FirstVisible[r] = r % length;   // padding: itself only
    }

    /// <summary>Sequences in the batch.</summary>
    public int Sequences { get; }
    /// <summary>Rows per sequence (the longest sequence's length).</summary>
    public int Length { get; }
    /// <summary>Rows in all (<see cref="Sequences"/> · <see cref="Length"/>).</summary>
    public int Rows => Sequences * Length;
    /// <summary>Per row: a token id, or −1 − r for adapter (soft token) row r.</summary>
    public int[] Source { get; }
    /// <summary>Per row: its RoPE position.</summary>
    public int[] Positions { get; }
    /// <summary>Per row: the index within its sequence of the first row it attends to.</summary>
    public int[] FirstVisible { get; }
    /// <summary>Per row: the token it is trained to predict (−1: none).</summary>
    public int[] Targets { get; }
    /// <summary>Per row: its row of <see cref="Teacher"/> (−1: none; then <see cref="Targets"/> applies).</summary>
    public int[] TeacherRows { get; }
    /// <summary>Per row: the weight of its loss (0: none).</summary>
    public float[] Weights { get; }
    /// <summary>Teacher probabilities [teacher rows, vocab], for distillation.</summary>
    public float[] Teacher { get; private set; } = [];

    /// <summary>Σ of the loss weights.</summary>
    public double TotalWeight => Weights.Sum(w => (double)w);

    /// <summary>Whether row <paramref name="i"/> attends to row <paramref name="j"/> of the same sequence (indices within it).</summary>
    public bool Visible(int sequence, int i, int j) => j <= i && j >= FirstVisible[sequence * Length + i];

    /// <summary>
    /// Causal language modelling: window b's tokens [0, n) are the inputs at positions 0..n−1 and its tokens [1, n]
    /// the targets, every row weighted 1 (or by <paramref name="weights"/>[b][i], e.g. answer tokens weighted up).
    /// </summary>
    public static TrainingBatch Causal(IReadOnlyList<int[]> windows, IReadOnlyList<float[]>? weights = null)
    {
        int n = windows.Max(w => w.Length) - 1;
        if (n < 1) throw new ArgumentException("a window needs at least two tokens (an input and its target)", nameof(windows));
        var batch = new TrainingBatch(windows.Count, n);
        for (int b = 0; b < windows.Count; b++)
            for (int i = 0; i + 1 < windows[b].Length; i++)
            {
                int r = b * n + i;
                batch.Source[r] = windows[b][i];
                batch.Positions[r] = i;
                batch.FirstVisible[r] = 0;
                batch.Targets[r] = windows[b][i + 1];
                batch.Weights[r] = weights is null ? 1f : weights[b][i];
            }
        return batch;
    }

    /// <summary>Sequences of rows with next-token targets (at their positions, 0..n−1 unless given), padded to the longest.</summary>
    public static TrainingBatch Of(IReadOnlyList<TrainingSequence> sequences)
    {
        var batch = new TrainingBatch(sequences.Count, sequences.Max(s => s.Source.Length));
        for (int b = 0; b < sequences.Count; b++)
        {
            var s = sequences[b];
            for (int i = 0; i < s.Source.Length; i++)
            {
                int r = b * batch.Length + i;
                batch.Source[r] = s.Source[i];
                batch.Positions[r] = s.Positions?[i] ?? i;
                batch.FirstVisible[r] = s.FirstVisible[i];
                batch.Targets[r] = s.Targets[i];
                batch.Weights[r] = s.Weights[i];
            }
        }
        return batch;
    }

    /// <summary>
    /// Distillation students (<see cref="StudentLayout"/>), one per example: the scored continuation rows carry KL to
    /// the example's teacher rows, each weighted 1 / (scored rows) so every example counts the same, as on the CPU.
    /// </summary>
    public static TrainingBatch Students(IReadOnlyList<DistillationExample> examples, IReadOnlyList<StudentLayout> layouts, int vocab)
    {
        int n = layouts.Max(l => l.Length);
        var batch = new TrainingBatch(examples.Count, n);
        var teacher = new List<float>();
        int teacherRows = 0;
        for (int b = 0; b < examples.Count; b++)
        {
            var (example, layout) = (examples[b], layouts[b]);
            for (int i = 0; i < layout.Length; i++)
            {
                int r = b * n + i;
                batch.Source[r] = layout.Source[i];
                batch.Positions[r] = i;
                batch.FirstVisible[r] = layout.FirstVisible[i];
            }
            for (int c = example.FirstScoredRow; c < example.Continuation.Length; c++)
            {
                int r = b * n + layout.ContinuationStart + c;
                batch.TeacherRows[r] = teacherRows++;
                batch.Weights[r] = 1f / example.ScoredRows;
                teacher.AddRange(example.Teacher.AsSpan(c * vocab, vocab));
            }
        }
        batch.Teacher = [.. teacher];
        return batch;
    }
}
