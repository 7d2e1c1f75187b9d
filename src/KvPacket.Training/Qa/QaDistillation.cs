using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;

namespace KvPacket.Training.Qa;

/// <summary>
/// Adapter distillation examples from QA benchmark questions: the documents as the packets, the question and the
/// answer as the continuation, scored from the question's last row (the one that predicts the answer) on — the rows a
/// reader's answer depends on; the teacher is full attention over the plain prompt.
/// </summary>
public static class QaDistillation
{
    /// <summary>The distillation examples of <paramref name="examples"/> for <paramref name="model"/> (teachers computed on it, any backend).</summary>
    public static DistillationExample[] Examples(IForwardBackend model, ITokenizer tokenizer, IEnumerable<QaExample> examples) =>
        DistillationExample.WithTeachers(model, [.. examples.Select(example =>
        {
            int[][] documents = [.. example.Documents.Select(d => QaPrompt.Document(tokenizer, d))];
            int[] question = QaPrompt.Question(tokenizer, example.Question);
            int[] answer = QaPrompt.Answer(tokenizer, example.Answers[0], example.Reasoning);
            return new DistillationExample(QaPrompt.Prefix(tokenizer), documents, [.. question, .. answer], [], FirstScoredRow: question.Length - 1);
        })]);
}
