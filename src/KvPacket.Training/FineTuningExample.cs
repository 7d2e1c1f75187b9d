using KvPacket.Engine.Rag;

namespace KvPacket.Training;

/// <summary>
/// A language-modelling example over retrieved documents for fine-tuning the whole model (KVLink's recipe): the model
/// learns to predict the continuation's tokens from row <see cref="FirstScoredRow"/> on, either with full attention over
/// the plain concatenation or with the documents encoded separately and link tokens after each.
/// </summary>
/// <param name="Prefix">Tokens before the documents (BOS).</param>
/// <param name="Documents">The documents.</param>
/// <param name="Continuation">Tokens after the documents (a question and its answer, or a text's next tokens).</param>
/// <param name="FirstScoredRow">The first continuation row whose next token is predicted (earlier rows are context).</param>
public sealed record FineTuningExample(int[] Prefix, int[][] Documents, int[] Continuation, int FirstScoredRow = 0)
{
    /// <summary>The example's rows and targets in <paramref name="mode"/>: <see cref="RagMode.Full"/> (plain concatenation) or <see cref="RagMode.KvLink"/> with <paramref name="links"/> link rows per document.</summary>
    public TrainingSequence Sequence(RagMode mode, int links)
    {
        if (mode is not (RagMode.Full or RagMode.KvLink)) throw new ArgumentException($"fine-tuning examples run as full or kvlink, not {mode}", nameof(mode));
        var layout = StudentLayout.Of(Prefix, Documents, Continuation, mode, 0, 0, links);   // the KVLink student's rows and masks
        var targets = Enumerable.Repeat(-1, layout.Length).ToArray();
        var weights = new float[layout.Length];
        int scored = Continuation.Length - 1 - FirstScoredRow;
        for (int r = FirstScoredRow; r + 1 < Continuation.Length; r++)
        {
            targets[layout.ContinuationStart + r] = Continuation[r + 1];
            weights[layout.ContinuationStart + r] = 1f / scored;
        }
        return new TrainingSequence(layout.Source, layout.FirstVisible, targets, weights);
    }
}

/// <summary>One training sequence: per row its source (token, or −1 − r for adapter row r), first visible row, target (−1: none) and loss weight.</summary>
public sealed record TrainingSequence(int[] Source, int[] FirstVisible, int[] Targets, float[] Weights)
{
    /// <summary>Per row its RoPE position (null: 0..n−1).</summary>
    public int[]? Positions { get; init; }
}
