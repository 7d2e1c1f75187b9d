using System.Globalization;
using KvPacket.Core.Tokenization;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// The <c>tokenizer.ggml.*</c> keys of a GGUF file: a SentencePiece-style vocabulary (model <c>llama</c>) of pieces with
/// scores and types, and the BOS/EOS ids. llama.cpp refuses a file without one.
/// </summary>
/// <param name="Pieces">Each id's piece.</param>
/// <param name="Scores">Each piece's merge score (higher merges first).</param>
/// <param name="Types">Each piece's SentencePiece type (1 normal, 2 unknown, 3 control, 6 byte).</param>
/// <param name="Bos">The beginning-of-sequence id.</param>
/// <param name="Eos">The end-of-sequence id.</param>
/// <param name="AddSpacePrefix">Whether encoding puts a space in front of the text (SentencePiece's dummy prefix).</param>
/// <param name="IsPlaceholder">A <see cref="Placeholder"/>: pieces that mean nothing, so readers offer no tokenizer.</param>
public sealed record GgufVocabulary(string[] Pieces, float[] Scores, int[] Types, int Bos, int Eos, bool AddSpacePrefix = true, bool IsPlaceholder = false)
{
    /// <summary>The key that marks a placeholder vocabulary.</summary>
    public const string PlaceholderKey = "kvpacket.vocabulary_is_placeholder";

    /// <summary>
    /// A stand-in for a model that has no tokenizer of its own (synthetic weights, say), so the file still loads
    /// everywhere: <c>&lt;unk&gt;</c>, <c>&lt;s&gt;</c>, <c>&lt;/s&gt;</c>, the 256 byte pieces (when there is room), then
    /// <c>▁tN</c> pieces that no text will ever produce. Token ids go in and out unchanged; text does not mean anything.
    /// </summary>
    public static GgufVocabulary Placeholder(int size)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        var pieces = new string[size];
        var scores = new float[size];
        var types = new int[size];
        string[] controls = ["<unk>", "<s>", "</s>"];
        int bytes = size >= controls.Length + 256 ? 256 : 0; // a vocabulary too small for the byte pieces goes without
        for (int id = 0; id < size; id++)
        {
            if (id < controls.Length) (pieces[id], types[id]) = (controls[id], id == 0 ? 2 : 3);
            else if (id < controls.Length + bytes) (pieces[id], types[id]) = (string.Create(CultureInfo.InvariantCulture, $"<0x{id - controls.Length:X2}>"), 6);
            else (pieces[id], types[id], scores[id]) = (string.Create(CultureInfo.InvariantCulture, $"\u2581t{id}"), 1, -id);
        }
        return new GgufVocabulary(pieces, scores, types, Math.Min(1, size - 1), Math.Min(2, size - 1), IsPlaceholder: true);
    }

    /// <summary>The vocabulary of <paramref name="tokenizer"/>.</summary>
    public static GgufVocabulary From(SentencePieceTokenizer tokenizer)
    {
        int size = tokenizer.VocabSize;
        var pieces = new string[size];
        var scores = new float[size];
        var types = new int[size];
        for (int id = 0; id < size; id++) (pieces[id], scores[id], types[id]) = (tokenizer.PieceOf(id), tokenizer.ScoreOf(id), tokenizer.TypeOf(id));
        return new GgufVocabulary(pieces, scores, types, tokenizer.BosId ?? 1, tokenizer.EosId ?? 2, tokenizer.DecodeStripsLeadingSpace);
    }

    /// <summary>The metadata entries that carry it.</summary>
    public IEnumerable<KeyValuePair<string, object>> Metadata()
    {
        yield return new("tokenizer.ggml.model", "llama");
        yield return new("tokenizer.ggml.tokens", Pieces);
        yield return new("tokenizer.ggml.scores", Scores);
        yield return new("tokenizer.ggml.token_type", Types);
        yield return new("tokenizer.ggml.bos_token_id", (uint)Bos);
        yield return new("tokenizer.ggml.eos_token_id", (uint)Eos);
        yield return new("tokenizer.ggml.add_space_prefix", AddSpacePrefix);
        if (IsPlaceholder) yield return new(PlaceholderKey, true);
    }

    /// <summary>
    /// The SentencePiece tokenizer a GGUF file's metadata carries (<c>tokenizer.ggml.model</c> = <c>llama</c>), null when
    /// it carries none or a placeholder.
    /// </summary>
    /// <exception cref="TokenizerFormatException">The keys are there but malformed, or name a tokenizer model not read here.</exception>
    public static SentencePieceTokenizer? TokenizerOf(string path, IReadOnlyDictionary<string, object> metadata)
    {
        if (!metadata.TryGetValue("tokenizer.ggml.model", out var model) || metadata.ContainsKey(PlaceholderKey)) return null;
        if (model is not "llama")
            throw new TokenizerFormatException(path, "tokenizer.ggml.model", $"'{model}' is not read here (llama, that is SentencePiece, is)");
        T[] Array<T>(string key) => metadata.TryGetValue(key, out var value) && value is object[] items && items.All(i => i is T)
            ? items.Cast<T>().ToArray()
            : throw new TokenizerFormatException(path, key, $"is missing or not an array of {typeof(T).Name}");
        string[] pieces = Array<string>("tokenizer.ggml.tokens");
        float[] scores = Array<float>("tokenizer.ggml.scores");
        int[] types = Array<int>("tokenizer.ggml.token_type");
        if (scores.Length != pieces.Length || types.Length != pieces.Length)
            throw new TokenizerFormatException(path, "tokenizer.ggml.scores", $"{pieces.Length} pieces but {scores.Length} scores and {types.Length} types");
        int? Id(string key) => metadata.TryGetValue(key, out var v) && v is uint id && id < pieces.Length ? (int)id : null;
        bool addSpacePrefix = !metadata.TryGetValue("tokenizer.ggml.add_space_prefix", out var prefix) || prefix is true;
        return SentencePieceTokenizer.FromPieces(path, pieces, scores, types, addSpacePrefix, Id("tokenizer.ggml.bos_token_id"), Id("tokenizer.ggml.eos_token_id"));
    }
}
