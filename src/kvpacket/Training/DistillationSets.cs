using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Training;

namespace KvPacket.Cli.Training;

/// <summary>The shape of the requests adapters are trained and evaluated on.</summary>
/// <param name="Documents">Documents per request.</param>
/// <param name="DocumentTokens">Tokens per document.</param>
/// <param name="QueryTokens">Query tokens (the start of the next document).</param>
/// <param name="GreedyTokens">Tokens of full context's greedy continuation after the query, scored with it.</param>
internal sealed record RequestShape(int Documents, int DocumentTokens, int QueryTokens, int GreedyTokens)
{
    public void Validate()
    {
        if (Documents < 1 || DocumentTokens < 1 || QueryTokens < 1 || GreedyTokens < 0)
            throw new ArgumentException("--documents, --document-tokens and --query-tokens must be at least 1, --continuation at least 0.");
        if (QueryTokens > DocumentTokens) throw new ArgumentException($"--query-tokens {QueryTokens} is longer than a document ({DocumentTokens}).");
    }
}

/// <summary>
/// Disjoint training and held-out requests from a document source: <c>generated</c> (the model's own stories, training
/// from seed <see cref="DocumentCorpus.TrainingSeed"/>, held-out from <see cref="DocumentCorpus.HeldOutSeed"/>), a text
/// file or directory of <c>.txt</c> files (the tokenizer next to the model), or a <c>.tokens</c> file; from files the
/// held-out requests are the last ones.
/// </summary>
internal static class DistillationSets
{
    public static (RagRequest[] Train, RagRequest[] HeldOut) Requests(string source, string modelPath, Transformer model, RequestShape shape, int trainCount, int heldOutCount)
    {
        shape.Validate();
        int[] prefix = [model.Config.BosTokenId ?? 1];
        int perRequest = shape.Documents + 1;
        if (source == "generated")
            return (DocumentCorpus.Requests(DocumentCorpus.Generated(model, DocumentCorpus.TrainingSeed, trainCount * perRequest, shape.DocumentTokens), shape.Documents, shape.QueryTokens, prefix),
                DocumentCorpus.Requests(DocumentCorpus.Generated(model, DocumentCorpus.HeldOutSeed, heldOutCount * perRequest, shape.DocumentTokens), shape.Documents, shape.QueryTokens, prefix));
        if (!File.Exists(source) && !Directory.Exists(source)) throw new FileNotFoundException($"--docs {source}: no such file or directory (or 'generated').");
        int[][] documents = source.EndsWith(".tokens", StringComparison.OrdinalIgnoreCase)
            ? DocumentCorpus.FromTokenFile(source, model.Config.VocabSize, shape.DocumentTokens)
            : DocumentCorpus.FromText(source, TokenizerLoader.TryLoadNextTo(modelPath) ?? throw new InvalidOperationException($"{modelPath}: no tokenizer next to the model to encode {source}; give a .tokens file."), shape.DocumentTokens);
        var all = DocumentCorpus.Requests(documents, shape.Documents, shape.QueryTokens, prefix);
        if (all.Length < heldOutCount + 1)
            throw new InvalidDataException($"--docs {source}: {documents.Length} documents of {shape.DocumentTokens} tokens make {all.Length} requests; {heldOutCount} held-out + at least 1 training request are needed.");
        int train = Math.Min(trainCount, all.Length - heldOutCount);
        return (all[..train], all[^heldOutCount..]);
    }

    /// <summary>Examples with the teacher's distributions (full attention, computed once here).</summary>
    public static DistillationExample[] Examples(Transformer model, IEnumerable<RagRequest> requests, RequestShape shape) =>
        [.. requests.Select(r => DistillationExample.FromRequest(model, r, shape.GreedyTokens))];
}
