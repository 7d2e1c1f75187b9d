using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Training;

/// <summary>
/// One training example for adapter distillation: documents and a continuation, with the teacher's next-token
/// distributions along the continuation (full attention over the plain concatenation, computed once).
/// </summary>
/// <param name="Prefix">Tokens before the documents (BOS).</param>
/// <param name="Documents">The documents, each encoded alone as a packet in the student.</param>
/// <param name="Continuation">Tokens after the documents; the loss is over the distributions before each of them … and after the last.</param>
/// <param name="Teacher">[continuation rows, vocab] probabilities: what full attention predicts at each continuation row.</param>
/// <param name="FirstScoredRow">The first continuation row the loss counts (rows before it only provide context).</param>
public sealed record DistillationExample(int[] Prefix, int[][] Documents, int[] Continuation, float[] Teacher, int FirstScoredRow = 0)
{
    /// <summary>Continuation rows the loss counts.</summary>
    public int ScoredRows => Continuation.Length - FirstScoredRow;

    /// <summary>Builds an example, running <paramref name="model"/> with full attention for the teacher.</summary>
    public static DistillationExample Create(Transformer model, int[] prefix, int[][] documents, int[] continuation)
    {
        int vocab = model.Config.VocabSize;
        using var sequence = model.CreateSequence();
        var scratch = new float[vocab];
        model.Prefill(sequence, prefix, scratch);
        foreach (var document in documents) model.Prefill(sequence, document, scratch);
        var logits = new float[continuation.Length * vocab];
        model.Prefill(sequence, continuation, logits, LogitsFor.AllTokens);
        for (int r = 0; r < continuation.Length; r++)
        {
            var row = logits.AsSpan(r * vocab, vocab);
            System.Numerics.Tensors.TensorPrimitives.SoftMax(row, row);
        }
        return new DistillationExample(prefix, documents, continuation, logits);
    }

    /// <summary>
    /// An example from a RAG request as the evaluation scores it: the continuation is the query followed by the
    /// <paramref name="greedyTokens"/> tokens full context produces after it greedily, and the loss counts the rows from
    /// the query's last token on — the distributions <see cref="ModeEvaluation"/> compares (predicting the query itself
    /// is not the task; on stories260K training on those rows too made held-out KL worse).
    /// </summary>
    public static DistillationExample FromRequest(Transformer model, RagRequest request, int greedyTokens)
    {
        using var full = new RagEngine(model);
        var (greedy, _) = ModeEvaluation.GreedyContinuation(model, full, request, greedyTokens);
        return Create(model, [.. request.Prefix], [.. request.Documents], [.. request.Query, .. greedy]) with { FirstScoredRow = request.Query.Length - 1 };
    }

    /// <summary>The same documents and continuation as a RAG request (the continuation is the query), for evaluation.</summary>
    public RagRequest AsRequest() => new(Prefix, Documents, Continuation);
}
