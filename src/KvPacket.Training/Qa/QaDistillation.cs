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
    /// <summary>The distillation example of <paramref name="example"/> for <paramref name="model"/> (its teacher computed here).</summary>
    public static DistillationExample Example(Transformer model, ITokenizer tokenizer, QaExample example)
    {
        int[] prefix = tokenizer.BosId is int bos ? [bos] : [];
        int[][] documents = [.. example.Documents.Select(d => QaPrompt.Document(tokenizer, d))];
        int[] question = QaPrompt.Question(tokenizer, example.Question);
        int[] answer = QaPrompt.Answer(tokenizer, example.Answers[0], example.Reasoning);
        return DistillationExample.Create(model, prefix, documents, [.. question, .. answer]) with { FirstScoredRow = question.Length - 1 };
    }
}
