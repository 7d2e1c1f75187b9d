using System.Globalization;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;

namespace KvPacket.Training;

/// <summary>
/// Where training and evaluation documents come from — each a token array of one length — and how they are grouped
/// into RAG requests. Sources: the model's own stories sampled from fixed seeds (for stories260K, which has no
/// tokenizer or corpus here), plain text files cut into documents with the model's tokenizer, or token files.
/// </summary>
public static class DocumentCorpus
{
    /// <summary>Seed of the first generated held-out document, far from training's.</summary>
    public const ulong HeldOutSeed = 9000;

    /// <summary>Seed of the first generated training document.</summary>
    public const ulong TrainingSeed = 100;

    /// <summary><paramref name="count"/> stories of <paramref name="length"/> tokens that <paramref name="model"/> samples from BOS (temperature 1), seeds <paramref name="firstSeed"/>, +1, ….</summary>
    public static int[][] Generated(Transformer model, ulong firstSeed, int count, int length)
    {
        var generator = new Generator(model);
        int bos = model.Config.BosTokenId ?? 1;
        return [.. Enumerable.Range(0, count).Select(i =>
        {
            var story = new List<int>(length);
            generator.Generate([bos], new GenerationOptions
            {
                MaxNewTokens = length, StopTokens = [], Sampling = new SamplingOptions { Temperature = 1f, Seed = firstSeed + (ulong)i },
            }, story.Add);
            return story.ToArray();
        })];
    }

    /// <summary>
    /// Text files (or every <c>*.txt</c> under a directory), encoded with <paramref name="tokenizer"/> one file at a
    /// time and cut into documents of <paramref name="length"/> tokens (a file's shorter tail is dropped).
    /// </summary>
    public static int[][] FromText(string path, ITokenizer tokenizer, int length)
    {
        var files = Directory.Exists(path) ? Directory.GetFiles(path, "*.txt", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToArray() : [path];
        if (files.Length == 0) throw new InvalidDataException($"{path}: no .txt files.");
        return [.. files.SelectMany(file => Cut(tokenizer.Encode(File.ReadAllText(file)), length))];
    }

    /// <summary>
    /// A token file: whitespace-separated token ids, one document per line (blank lines skipped), each cut into
    /// documents of <paramref name="length"/> tokens; ids must be below <paramref name="vocabSize"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">A value is not a token id of the vocabulary (the error names the line).</exception>
    public static int[][] FromTokenFile(string path, int vocabSize, int length)
    {
        var documents = new List<int[]>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            var ids = new List<int>();
            foreach (string field in line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
            {
                if (!int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= vocabSize)
                    throw new InvalidDataException($"{path}, line {lineNumber}: '{field}' is not a token id below the vocabulary size {vocabSize}.");
                ids.Add(id);
            }
            documents.AddRange(Cut([.. ids], length));
        }
        return [.. documents];
    }

    private static IEnumerable<int[]> Cut(int[] tokens, int length)
    {
        for (int start = 0; start + length <= tokens.Length; start += length) yield return tokens[start..(start + length)];
    }

    /// <summary>
    /// Groups <paramref name="documents"/> into requests: each takes <paramref name="perRequest"/> documents, and the
    /// first <paramref name="queryTokens"/> tokens of the next document as its query; prefix <paramref name="prefix"/>.
    /// </summary>
    public static RagRequest[] Requests(int[][] documents, int perRequest, int queryTokens, int[] prefix)
    {
        int group = perRequest + 1;
        return [.. Enumerable.Range(0, documents.Length / group).Select(r =>
            new RagRequest(prefix, documents[(r * group)..(r * group + perRequest)], documents[r * group + perRequest][..queryTokens]))];
    }
}
