using KvPacket.Core.Tokenization;

namespace KvPacket.Training.Qa;

/// <summary>
/// KVLink fine-tuning examples from QA benchmark questions: the documents, then the question and its answer as the
/// continuation, the loss on the answer's tokens (from the question's last row on) — the same rows adapter distillation
/// scores, here against the gold answer instead of a teacher.
/// </summary>
public static class QaFineTuning
{
    /// <summary>The fine-tuning example of <paramref name="example"/> in the prompt format of <see cref="QaPrompt"/>.</summary>
    public static FineTuningExample Example(ITokenizer tokenizer, QaExample example)
    {
        int[] prefix = QaPrompt.Prefix(tokenizer);
        int[][] documents = [.. example.Documents.Select(d => QaPrompt.Document(tokenizer, d))];
        int[] question = QaPrompt.Question(tokenizer, example.Question);
        return new FineTuningExample(prefix, documents, [.. question, .. QaPrompt.Answer(tokenizer, example.Answers[0], example.Reasoning)], question.Length - 1);
    }
}
