using System.Globalization;
using KvPacket.Core.Tokenization;

namespace KvPacket.Core.Checkpoints;

/// <summary>
/// The <c>tokenizer.ggml.*</c> keys of a GGUF file: a SentencePiece-style vocabulary (model <c>llama</c>) of pieces with
/// scores and types, or a byte-level BPE one (model <c>gpt2</c>) of pieces, types, a merge list and a pre-tokenizer
/// name; and the BOS/EOS ids. llama.cpp refuses a file without one.
/// </summary>
/// <param name="Pieces">Each id's piece.</param>
/// <param name="Scores">Each piece's merge score (higher merges first).</param>
/// <param name="Types">Each piece's SentencePiece type (1 normal, 2 unknown, 3 control, 6 byte).</param>
/// <param name="Bos">The beginning-of-sequence id (negative: none, not written).</param>
/// <param name="Eos">The end-of-sequence id (negative: none, not written).</param>
/// <param name="AddSpacePrefix">Whether encoding puts a space in front of the text (SentencePiece's dummy prefix).</param>
/// <param name="IsPlaceholder">A <see cref="Placeholder"/>: pieces that mean nothing, so readers offer no tokenizer.</param>
/// <param name="Merges">Byte-level BPE only: the merge list in rank order ("left right"); null for SentencePiece.</param>
/// <param name="PreTokenizerPattern">Byte-level BPE only: the pre-tokenizer's regex.</param>
public sealed record GgufVocabulary(string[] Pieces, float[] Scores, int[] Types, int Bos, int Eos, bool AddSpacePrefix = true, bool IsPlaceholder = false,
    string[]? Merges = null, string? PreTokenizerPattern = null)
{
    /// <summary>The key that marks a placeholder vocabulary.</summary>
    public const string PlaceholderKey = "kvpacket.vocabulary_is_placeholder";

    /// <summary>Our key for a byte-level BPE pre-tokenizer's exact regex (llama.cpp knows pre-tokenizers by name only).</summary>
    public const string PatternKey = "kvpacket.pre_tokenizer_pattern";

    /// <summary>llama.cpp's names (<c>tokenizer.ggml.pre</c>) for the pre-tokenizer regexes we know.</summary>
    private static readonly (string Name, string Pattern)[] PreTokenizers =
        [("gpt-2", PreTokenizer.Gpt2Pattern), ("llama-bpe", PreTokenizer.Llama3Pattern), ("llama3", PreTokenizer.Llama3Pattern), ("qwen2", PreTokenizer.Qwen2Pattern)];

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

    /// <summary>
    /// The vocabulary of a byte-level BPE <paramref name="tokenizer"/> read with a merge list (tokenizer.json or GGUF):
    /// added tokens typed control (special) or user-defined, the rest normal.
    /// </summary>
    /// <exception cref="NotSupportedException">The tokenizer came from a tiktoken file (no merge list) or has no pre-tokenizer.</exception>
    public static GgufVocabulary From(ByteLevelBpeTokenizer tokenizer)
    {
        var merges = tokenizer.Merges ?? throw new NotSupportedException("a tiktoken vocabulary has no merge list to write");
        string pattern = tokenizer.PreTokenizerPattern ?? throw new NotSupportedException("a byte-level BPE without a pre-tokenizer regex is not written");
        int size = tokenizer.VocabSize;
        var pieces = new string[size];
        var types = new int[size];
        for (int id = 0; id < size; id++) (pieces[id], types[id]) = (tokenizer.PieceOf(id), 1);
        foreach (var (_, id, special) in tokenizer.AddedTokens) types[id] = special ? 3 : 4;
        return new GgufVocabulary(pieces, new float[size], types, tokenizer.BosId ?? -1, tokenizer.EosId ?? -1, AddSpacePrefix: false,
            Merges: merges.Select(m => $"{m.Left} {m.Right}").ToArray(), PreTokenizerPattern: pattern);
    }

    /// <summary>The metadata entries that carry it.</summary>
    public IEnumerable<KeyValuePair<string, object>> Metadata()
    {
        yield return new("tokenizer.ggml.model", Merges is null ? "llama" : "gpt2");
        yield return new("tokenizer.ggml.tokens", Pieces);
        if (Merges is null) yield return new("tokenizer.ggml.scores", Scores);
        yield return new("tokenizer.ggml.token_type", Types);
        if (Merges is not null)
        {
            yield return new("tokenizer.ggml.merges", Merges);
            yield return new("tokenizer.ggml.pre", PreTokenizers.FirstOrDefault(p => p.Pattern == PreTokenizerPattern).Name ?? "default");
            yield return new(PatternKey, PreTokenizerPattern!);
        }
        if (Bos >= 0) yield return new("tokenizer.ggml.bos_token_id", (uint)Bos);
        if (Eos >= 0) yield return new("tokenizer.ggml.eos_token_id", (uint)Eos);
        yield return new("tokenizer.ggml.add_space_prefix", AddSpacePrefix);
        if (IsPlaceholder) yield return new(PlaceholderKey, true);
    }

    /// <summary>
    /// The tokenizer a GGUF file's metadata carries — SentencePiece (<c>tokenizer.ggml.model</c> = <c>llama</c>) or
    /// byte-level BPE (<c>gpt2</c>) — null when it carries none or a placeholder.
    /// </summary>
    /// <exception cref="TokenizerFormatException">The keys are there but malformed, or name a tokenizer model or pre-tokenizer not read here.</exception>
    public static ITokenizer? TokenizerOf(string path, IReadOnlyDictionary<string, object> metadata)
    {
        if (!metadata.TryGetValue("tokenizer.ggml.model", out var model) || metadata.ContainsKey(PlaceholderKey)) return null;
        if (model is not ("llama" or "gpt2"))
            throw new TokenizerFormatException(path, "tokenizer.ggml.model", $"'{model}' is not read here (llama, that is SentencePiece, and gpt2, byte-level BPE, are)");
        T[] Array<T>(string key) => metadata.TryGetValue(key, out var value) && value is object[] items && items.All(i => i is T)
            ? items.Cast<T>().ToArray()
            : throw new TokenizerFormatException(path, key, $"is missing or not an array of {typeof(T).Name}");
        string[] pieces = Array<string>("tokenizer.ggml.tokens");
        int[] types = Array<int>("tokenizer.ggml.token_type");
        int? Id(string key) => metadata.TryGetValue(key, out var v) && v is uint id && id < pieces.Length ? (int)id : null;
        if (model is "gpt2")
        {
            string pattern = metadata.TryGetValue(PatternKey, out var own) && own is string exact ? exact
                : metadata.TryGetValue("tokenizer.ggml.pre", out var pre) && PreTokenizers.FirstOrDefault(p => p.Name == (pre as string)).Pattern is { } known ? known
                : throw new TokenizerFormatException(path, "tokenizer.ggml.pre", $"'{(metadata.TryGetValue("tokenizer.ggml.pre", out var name) ? name : "(missing)")}' is not a pre-tokenizer read here ({string.Join(", ", PreTokenizers.Select(p => p.Name))})");
            return ByteLevelBpeTokenizer.FromGguf(path, pieces, types, Array<string>("tokenizer.ggml.merges"), pattern,
                Id("tokenizer.ggml.bos_token_id"), Id("tokenizer.ggml.eos_token_id"));
        }
        float[] scores = Array<float>("tokenizer.ggml.scores");
        if (scores.Length != pieces.Length || types.Length != pieces.Length)
            throw new TokenizerFormatException(path, "tokenizer.ggml.scores", $"{pieces.Length} pieces but {scores.Length} scores and {types.Length} types");
        bool addSpacePrefix = !metadata.TryGetValue("tokenizer.ggml.add_space_prefix", out var prefix) || prefix is true;
        return SentencePieceTokenizer.FromPieces(path, pieces, scores, types, addSpacePrefix, Id("tokenizer.ggml.bos_token_id"), Id("tokenizer.ggml.eos_token_id"));
    }
}
