using KvPacket.Core.Tokenization;

namespace KvPacket.Training.Qa;

/// <summary>
/// The one prompt format our QA model is trained and queried with, tokenized segment by segment so a document's tokens
/// are the same whether it is read in context or encoded alone as a packet:
/// <c>BOS</c>, then per document <c>"Document: {title}\n{text}\n\n"</c>, then <c>"Question: {question}\nAnswer:"</c>, and the
/// answer <c>" {answer}"</c> followed by EOS (a training line may then ask follow-up questions the same way). An answer
/// with reasoning states it first: <c>" {reasoning}; so {answer}"</c>, and <see cref="FinalAnswer"/> takes the answer back out.
/// </summary>
public static class QaPrompt
{
    /// <summary>What separates an answer's reasoning from the answer itself.</summary>
    public const string ReasoningMarker = "; so ";

    /// <summary>A document's text segment.</summary>
    public static string DocumentText(QaDocument document) => $"Document: {document.Title}\n{document.Text}\n\n";

    /// <summary>The question's text segment (the query a RAG request ends with).</summary>
    public static string QuestionText(string question) => $"Question: {question}\nAnswer:";

    /// <summary>The answer's text segment, its reasoning (if any) first (EOS follows it as a token).</summary>
    public static string AnswerText(string answer, string? reasoning = null) => reasoning is null ? " " + answer : $" {reasoning}{ReasoningMarker}{answer}";

    /// <summary>The answer in generated text: what follows the last <see cref="ReasoningMarker"/>, or all of it.</summary>
    public static string FinalAnswer(string generated)
    {
        int at = MarkerAt(generated);
        return (at < 0 ? generated : generated[(at + ReasoningMarker.Length)..]).Trim();
    }

    /// <summary>What generated text states before its answer (before the last <see cref="ReasoningMarker"/>), or null.</summary>
    public static string? StatedReasoning(string generated) => MarkerAt(generated) is var at and >= 0 ? generated[..at].Trim() : null;

    private static int MarkerAt(string generated) => generated.LastIndexOf(ReasoningMarker, StringComparison.Ordinal);

    /// <summary>A document's segment.</summary>
    public static int[] Document(ITokenizer tokenizer, QaDocument document) => tokenizer.Encode(DocumentText(document));

    /// <summary>The prompt's prefix, before the documents: BOS, where the tokenizer has one.</summary>
    public static int[] Prefix(ITokenizer tokenizer) => tokenizer.BosId is int bos ? [bos] : [];

    /// <summary>The question's segment.</summary>
    public static int[] Question(ITokenizer tokenizer, string question) => tokenizer.Encode(QuestionText(question));

    /// <summary>The answer's segment, its reasoning (if any) first, with EOS.</summary>
    public static int[] Answer(ITokenizer tokenizer, string answer, string? reasoning = null) =>
        [.. tokenizer.Encode(AnswerText(answer, reasoning)), .. tokenizer.EosId is int eos ? [eos] : Array.Empty<int>()];

    /// <summary>
    /// The whole training line as alternating segments: the prompt (BOS, documents, first question), its answer, then
    /// each follow-up question and its answer — the odd segments are answers.
    /// </summary>
    public static IEnumerable<int[]> TrainingLine(ITokenizer tokenizer, QaExample example)
    {
        yield return [.. Prefix(tokenizer), .. example.Documents.SelectMany(d => Document(tokenizer, d)), .. Question(tokenizer, example.Question)];
        yield return Answer(tokenizer, example.Answers[0], example.Reasoning);
        foreach (var followUp in example.FollowUps ?? [])
        {
            yield return Question(tokenizer, followUp.Question);
            yield return Answer(tokenizer, followUp.Answers[0], followUp.Reasoning);
        }
    }
}
