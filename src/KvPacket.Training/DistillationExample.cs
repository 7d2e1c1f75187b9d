using System.Runtime.InteropServices;
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
    public static DistillationExample Create(IForwardBackend model, int[] prefix, int[][] documents, int[] continuation) =>
        WithTeachers(model, [new DistillationExample(prefix, documents, continuation, [])])[0];

    /// <summary>
    /// <paramref name="examples"/> with their teachers computed on <paramref name="model"/> (any backend): a wave of
    /// sequences at a time, as many as the step and the free KV blocks take, each one's prefix and documents prefilled
    /// in chunks under the step's token budget, then the continuation one token a step for the whole wave, each step's
    /// rows softmaxed into the teachers. On a GPU that is what makes teachers for thousands of questions cheap.
    /// </summary>
    public static DistillationExample[] WithTeachers(IForwardBackend model, IReadOnlyList<DistillationExample> examples)
    {
        int vocab = model.Config.VocabSize, blockTokens = model.KvBlocks.Layout.BlockSize;
        var result = new DistillationExample[examples.Count];
        var sequences = new List<int>();
        for (int first = 0; first < examples.Count;)
        {
            int count = 0;
            for (long blocks = 0; first + count < examples.Count && count < model.MaxStepSequences; count++)
            {
                var e = examples[first + count];
                blocks += (e.Prefix.Length + e.Documents.Sum(d => d.Length) + e.Continuation.Length + blockTokens - 1) / blockTokens;
                if (blocks > model.KvBlocks.FreeBlockCount) break;
            }
            if (count == 0)
                throw new InvalidOperationException($"example {first} does not fit the {model.KvBlocks.FreeBlockCount} free KV blocks of {blockTokens} tokens");
            try
            {
                for (int i = 0; i < count; i++) sequences.Add(model.CreateSequence());
                var wave = Enumerable.Range(first, count).Select(i => examples[i]).ToArray();
                var teachers = TeachersOf(model, [.. sequences], wave, vocab);
                for (int i = 0; i < count; i++) result[first + i] = wave[i] with { Teacher = teachers[i] };
            }
            finally
            {
                foreach (int sequence in sequences) model.ReleaseSequence(sequence);
                sequences.Clear();
            }
            first += count;
        }
        return result;
    }

    /// <summary>One wave of <see cref="WithTeachers"/>: <paramref name="wave"/>[i] runs in <paramref name="sequences"/>[i].</summary>
    private static float[][] TeachersOf(IForwardBackend model, int[] sequences, DistillationExample[] wave, int vocab)
    {
        int n = wave.Length;
        int[][] contexts = [.. wave.Select(e => (int[])[.. e.Prefix, .. e.Documents.SelectMany(d => d)])];
        var logits = new float[n * vocab];
        var chunkSequences = new List<int>(n);
        var chunkLengths = new List<int>(n);
        var tokens = new List<int>();
        var done = new int[n];
        while (true)
        {
            chunkSequences.Clear(); chunkLengths.Clear(); tokens.Clear();
            for (int i = 0; i < n && tokens.Count < model.MaxStepTokens; i++)
            {
                int take = Math.Min(contexts[i].Length - done[i], model.MaxStepTokens - tokens.Count);
                if (take == 0) continue;
                chunkSequences.Add(sequences[i]); chunkLengths.Add(take);
                tokens.AddRange(contexts[i].AsSpan(done[i], take));
                done[i] += take;
            }
            if (chunkSequences.Count == 0) break;
            model.Step(CollectionsMarshal.AsSpan(chunkSequences), CollectionsMarshal.AsSpan(chunkLengths), CollectionsMarshal.AsSpan(tokens), [], logits);
        }

        float[][] teachers = [.. wave.Select(e => new float[e.Continuation.Length * vocab])];
        var rowOf = new List<int>(n);
        for (int r = 0, rows = wave.Max(e => e.Continuation.Length); r < rows; r++)
        {
            chunkSequences.Clear(); chunkLengths.Clear(); tokens.Clear(); rowOf.Clear();
            for (int i = 0; i < n; i++)
                if (r < wave[i].Continuation.Length)
                {
                    chunkSequences.Add(sequences[i]); chunkLengths.Add(1); tokens.Add(wave[i].Continuation[r]); rowOf.Add(i);
                }
            model.Step(CollectionsMarshal.AsSpan(chunkSequences), CollectionsMarshal.AsSpan(chunkLengths), CollectionsMarshal.AsSpan(tokens), [], logits);
            for (int c = 0; c < rowOf.Count; c++)
                System.Numerics.Tensors.TensorPrimitives.SoftMax(logits.AsSpan(c * vocab, vocab), teachers[rowOf[c]].AsSpan(r * vocab, vocab));
        }
        return teachers;
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
