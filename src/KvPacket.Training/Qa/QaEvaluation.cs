using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Training.Qa;

/// <summary>One (mode, question type)'s scores.</summary>
public sealed record QaScore(string Mode, string Type, int Questions, double ExactMatch, double F1, double Accuracy, double MeanTtftSeconds, double MeanDocumentFlops);

/// <summary>One question's answer in one mode: <paramref name="Prediction"/> is the answer scored (<see cref="QaPrompt.FinalAnswer"/>),
/// <paramref name="Generated"/> all the model wrote, reasoning included.</summary>
public sealed record QaAnswer(string Id, string Mode, string Type, string Question, string Gold, string Prediction, double F1, double TtftSeconds, double DocumentFlops, string Generated);

/// <summary>
/// Answers QA benchmark questions with the engine in each RAG mode — the prompt of <see cref="QaPrompt"/>, the documents
/// as the request's documents (packets, in the packet modes) and greedy decoding to EOS — and scores them per question
/// type. "closed-book" is full attention with no documents at all: what the model answers from memory. A model trained
/// to state its reasoning first (<see cref="QaPrompt.AnswerText"/>) is scored on what follows it; <paramref name="maxAnswerTokens"/>
/// leaves room for both.
/// </summary>
/// <remarks>
/// Each question gets an engine of its own; its packets come from <paramref name="packets"/> (a store, say) or, by
/// default, are built for it and freed with it — outside the timed prefill either way.
/// </remarks>
public sealed class QaEvaluation(IForwardBackend model, ITokenizer tokenizer, Adapter? adapter = null, IPacketSource? packets = null, int maxAnswerTokens = 48)
{
    /// <summary>The closed-book pseudo-mode's name.</summary>
    public const string ClosedBook = "closed-book";

    /// <summary>Where each answer's prefill (to the first token) and decode are recorded, a row per mode of <see cref="TraceModes"/> (null: nowhere).</summary>
    public Core.Diagnostics.TraceRecorder? Trace { get; init; }

    /// <summary>The modes in the order of the trace's rows.</summary>
    public IReadOnlyList<string> TraceModes { get; init; } = [];

    /// <summary>Whether packets are realigned to their placement (the default; <see cref="RagEngine.RealignPackets"/>).</summary>
    public bool RealignPackets { get; init; } = true;

    /// <summary>The prediction for <paramref name="example"/> in <paramref name="mode"/> (<see cref="ClosedBook"/> or a <see cref="RagMode"/>).</summary>
    public QaAnswer Answer(QaExample example, string mode)
    {
        int[][] documents = mode == ClosedBook ? [] : [.. example.Documents.Select(d => QaPrompt.Document(tokenizer, d))];
        var request = new RagRequest(QaPrompt.Prefix(tokenizer), documents, QaPrompt.Question(tokenizer, example.Question));
        var ragMode = mode == ClosedBook ? RagMode.Full : Enum.Parse<RagMode>(mode, ignoreCase: true);
        using var engine = new RagEngine(model, packets) { Adapter = adapter, RealignPackets = RealignPackets };
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var result = engine.Prefill(request, ragMode);
        long prefilled = System.Diagnostics.Stopwatch.GetTimestamp();
        using var sequence = result.Sequence;
        int vocab = model.Config.VocabSize;
        var logits = result.QueryLogits.AsSpan(result.QueryLogits.Length - vocab).ToArray();
        var answer = new List<int>();
        for (int i = 0; i < maxAnswerTokens && sequence.Length < sequence.MaxLength; i++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(logits);
            if (next == tokenizer.EosId) break;
            answer.Add(next);
            sequence.Prefill([next], logits);
        }
        if (Trace is { } trace)
        {
            int row = 0;
            while (row < TraceModes.Count && TraceModes[row] != mode) row++;
            if (row == TraceModes.Count) row = 0;
            trace.Record("prefill", mode, row, start, prefilled, "documents", documents.Length, "document_flops", (long)result.DocumentFlops);
            trace.Record("decode", mode, row, prefilled, System.Diagnostics.Stopwatch.GetTimestamp(), "tokens", answer.Count);
        }
        string generated = tokenizer.Decode(answer.ToArray()).Trim(), prediction = QaPrompt.FinalAnswer(generated);
        string gold = example.Answers[0];
        return new QaAnswer(example.Id, mode, example.Type, example.Question, gold, prediction, AnswerScore.F1(prediction, gold), result.TimeToFirstTokenSeconds, result.DocumentFlops, generated);
    }

    /// <summary>Each mode's scores over <paramref name="answers"/>: per question type and over all ("all").</summary>
    public static IReadOnlyList<QaScore> Score(IReadOnlyList<QaAnswer> answers, IReadOnlyList<string> modes)
    {
        var scores = new List<QaScore>();
        foreach (string mode in modes)
            foreach (string type in QaBenchmark.Types.Append("all"))
            {
                var set = answers.Where(a => a.Mode == mode && (type == "all" || a.Type == type)).ToList();
                if (set.Count == 0) continue;
                scores.Add(new QaScore(mode, type, set.Count, set.Average(a => AnswerScore.ExactMatch(a.Prediction, a.Gold)), set.Average(a => a.F1),
                    set.Average(a => AnswerScore.Contains(a.Prediction, a.Gold)), set.Average(a => a.TtftSeconds), set.Average(a => a.DocumentFlops)));
            }
        return scores;
    }

    /// <summary>
    /// Positions <paramref name="example"/> takes in <paramref name="mode"/> before its answer: the prefix, its documents
    /// with the soft tokens the mode places beside each (KV Packet's header and trailer, KVLink's links) and the question.
    /// </summary>
    public int PromptPositions(QaExample example, string mode) => LongestPrompt(example, [mode]);

    /// <summary>The most positions <paramref name="example"/> takes before its answer in any of <paramref name="modes"/> (its text tokenized once).</summary>
    private int LongestPrompt(QaExample example, IReadOnlyList<string> modes)
    {
        int question = QaPrompt.Prefix(tokenizer).Length + QaPrompt.Question(tokenizer, example.Question).Length;
        var reading = modes.Where(m => m != ClosedBook).ToList();
        if (reading.Count == 0) return question;
        int soft = reading.Max(SoftRowsPerDocument);
        return question + example.Documents.Sum(d => QaPrompt.Document(tokenizer, d).Length + soft);
    }

    /// <summary>Soft rows <paramref name="mode"/> places beside each document: KV Packet's header and trailer, KVLink's links.</summary>
    private int SoftRowsPerDocument(string mode) => adapter is null ? 0 : Enum.Parse<RagMode>(mode, ignoreCase: true) switch
    {
        RagMode.KvPacket => (adapter.Header.Length + adapter.Trailer.Length) / model.Config.HiddenSize,
        RagMode.KvLink => adapter.Links.Length / model.Config.HiddenSize,
        _ => 0,
    };

    /// <summary>
    /// Scores every mode on <paramref name="examples"/>: per question type and over all ("all"). Every prompt is checked
    /// against the model's context first, so a split with questions too long for it is refused before any is answered.
    /// </summary>
    /// <exception cref="ArgumentException">A question whose prompt leaves no room for an answer in some mode (the count and the first named).</exception>
    public (IReadOnlyList<QaScore> Scores, IReadOnlyList<QaAnswer> Answers) Run(IReadOnlyList<QaExample> examples, IReadOnlyList<string> modes, Action<int>? progress = null)
    {
        int context = model.MaxSequenceLength;
        var tooLong = examples.Select(e => (e.Id, Positions: LongestPrompt(e, modes), e.Documents.Length)).Where(e => e.Positions >= context).ToList();
        if (tooLong.Count > 0)
            throw new ArgumentException($"{tooLong.Count} of {examples.Count} questions do not fit the model's {context} positions with their documents; "
                + $"the first, {tooLong[0].Id} ({tooLong[0].Length} documents), takes {tooLong[0].Positions} before its answer — use fewer documents per question");
        var answers = new List<QaAnswer>();
        int done = 0;
        foreach (var example in examples)
        {
            foreach (string mode in modes) answers.Add(Answer(example, mode));
            progress?.Invoke(++done);
        }
        return (Score(answers, modes), answers);
    }
}
