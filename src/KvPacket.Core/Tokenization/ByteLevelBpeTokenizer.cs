using KvPacket.Core.Memory;
using System.Text;
using System.Text.Json;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Byte-level BPE (GPT-2, Llama 3, Qwen2): added tokens are matched first, the rest is split into words by a
/// pre-tokenizer regex, and each word's UTF-8 bytes are merged by rank. Read from a Hugging Face
/// <c>tokenizer.json</c> (<see cref="LoadHuggingFace"/>) or a tiktoken file (<see cref="LoadTiktoken"/>).
/// Encoded words are cached, so encoding text whose words were seen before allocates nothing.
/// </summary>
public sealed class ByteLevelBpeTokenizer : ITokenizer
{
    private readonly string[] _pieces;
    private readonly byte[][] _bytes;
    private readonly int[] _byteIds;
    private readonly MergeTable _merges;
    private readonly PreTokenizer _preTokenizer;
    private readonly bool _addPrefixSpace;
    private readonly (string Text, int Id)[] _added;     // longest first
    private readonly (string Text, int Id, bool Special)[] _addedTokens;
    private (string Left, string Right)[]? _mergeList;   // in rank order, when the source had a merge list
    private readonly bool[] _addedFirstChars = new bool[char.MaxValue + 1];
    private readonly WordCache _cache = new();

    private ByteLevelBpeTokenizer(string[] pieces, byte[][] bytes, int[] byteIds, MergeTable merges, PreTokenizer preTokenizer,
        bool addPrefixSpace, IEnumerable<(string Text, int Id, bool Special)> added)
    {
        _pieces = pieces;
        _bytes = bytes;
        _byteIds = byteIds;
        _merges = merges;
        _preTokenizer = preTokenizer;
        _addPrefixSpace = addPrefixSpace;
        var addedList = added.ToList();
        _addedTokens = [.. addedList];
        _added = addedList.Where(a => a.Text.Length > 0).OrderByDescending(a => a.Text.Length).Select(a => (a.Text, a.Id)).ToArray();
        foreach (var (text, _) in _added) _addedFirstChars[text[0]] = true;
        SpecialTokens = addedList.Where(a => a.Special).ToDictionary(a => a.Text, a => a.Id);
    }

    /// <inheritdoc />
    public int VocabSize => _pieces.Length;
    /// <inheritdoc />
    public int? BosId { get; private init; }
    /// <inheritdoc />
    public int? EosId { get; private init; }
    /// <inheritdoc />
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    /// <inheritdoc />
    public bool DecodeStripsLeadingSpace => false;
    /// <summary>The pre-tokenizer's regex, or null.</summary>
    public string? PreTokenizerPattern => _preTokenizer.Pattern;

    /// <summary>Reads a Hugging Face <c>tokenizer.json</c> whose model is byte-level BPE.</summary>
    public static ByteLevelBpeTokenizer LoadHuggingFace(string path)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(path, "json", $"is not valid JSON ({e.Message})", e);
        }
        using (document)
        {
            try
            {
                return FromJson(path, document.RootElement);
            }
            catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException)
            {
                throw new TokenizerFormatException(path, "json", $"unexpected structure ({e.Message})", e);
            }
        }
    }

    private static ByteLevelBpeTokenizer FromJson(string path, JsonElement root)
    {
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new TokenizerFormatException(path, "model", "is missing");
        string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        if (type != "BPE") throw new TokenizerFormatException(path, "model.type", $"'{type}' is not supported (BPE)");
        if (root.TryGetProperty("normalizer", out var normalizer) && normalizer.ValueKind != JsonValueKind.Null)
            throw new TokenizerFormatException(path, "normalizer", $"'{normalizer.GetProperty("type").GetString()}' is not supported yet (none)");
        if (!model.TryGetProperty("vocab", out var vocabElement) || vocabElement.ValueKind != JsonValueKind.Object)
            throw new TokenizerFormatException(path, "model.vocab", "is missing");

        var vocab = new Dictionary<string, int>();
        foreach (var entry in vocabElement.EnumerateObject()) vocab[entry.Name] = entry.Value.GetInt32();
        var added = new List<(string, int, bool)>();
        if (root.TryGetProperty("added_tokens", out var addedTokens) && addedTokens.ValueKind == JsonValueKind.Array)
            foreach (var token in addedTokens.EnumerateArray())
                added.Add((token.GetProperty("content").GetString()!, token.GetProperty("id").GetInt32(), token.TryGetProperty("special", out var s) && s.GetBoolean()));
        if (!model.TryGetProperty("merges", out var mergeList) || mergeList.ValueKind != JsonValueKind.Array)
            throw new TokenizerFormatException(path, "model.merges", "is missing");
        var merges = new List<(string, string)>();
        foreach (var merge in mergeList.EnumerateArray())
            merges.Add(merge.ValueKind switch
            {
                JsonValueKind.String when merge.GetString()!.Split(' ') is [var l, var r] => (l, r),
                JsonValueKind.Array when merge.GetArrayLength() == 2 => (merge[0].GetString()!, merge[1].GetString()!),
                _ => throw new TokenizerFormatException(path, $"model.merges[{merges.Count}]", $"'{merge}' is not a pair"),
            });
        var (pattern, addPrefixSpace) = ReadPreTokenizer(path, root.TryGetProperty("pre_tokenizer", out var pre) ? pre : default);
        int? Find(params string[] names) => names.Select(n => added.FirstOrDefault(a => a.Item1 == n)).Where(a => a.Item1 is not null).Select(a => (int?)a.Item2).FirstOrDefault();
        return Build(path, vocab, added, merges, pattern, addPrefixSpace,
            Find("<|begin_of_text|>", "<s>", "<|startoftext|>"), Find("<|end_of_text|>", "<|endoftext|>", "</s>"));
    }

    /// <summary>
    /// A tokenizer from a GGUF vocabulary of model <c>gpt2</c>: <paramref name="pieces"/> in the byte-level alphabet, those
    /// of type 3 (control) or 4 (user-defined) matched whole before the pre-tokenizer, as a tokenizer.json's added tokens.
    /// </summary>
    public static ByteLevelBpeTokenizer FromGguf(string path, string[] pieces, int[] types, string[] merges, string pattern, int? bos, int? eos)
    {
        if (types.Length != pieces.Length)
            throw new TokenizerFormatException(path, "tokenizer.ggml.token_type", $"{types.Length} types for {pieces.Length} tokens");
        var vocab = new Dictionary<string, int>();
        var added = new List<(string, int, bool)>();
        for (int id = 0; id < pieces.Length; id++)
        {
            if (types[id] is 3 or 4) added.Add((pieces[id], id, types[id] == 3));
            else if (!vocab.TryAdd(pieces[id], id)) throw new TokenizerFormatException(path, $"tokenizer.ggml.tokens[{id}]", $"'{pieces[id]}' appears twice");
        }
        var pairs = merges.Select((merge, rank) => merge.Split(' ') is [var l, var r] ? (l, r)
            : throw new TokenizerFormatException(path, $"tokenizer.ggml.merges[{rank}]", $"'{merge}' is not a pair")).ToList();
        return Build(path, vocab, added, pairs, pattern, false, bos, eos);
    }

    private static ByteLevelBpeTokenizer Build(string path, Dictionary<string, int> vocab, List<(string Text, int Id, bool Special)> added,
        List<(string Left, string Right)> mergeList, string? pattern, bool addPrefixSpace, int? bos, int? eos)
    {
        // Ids are dense: every id below the vocabulary and added tokens' count names one token (checked below).
        int tokens = vocab.Count + added.Count(a => !vocab.ContainsKey(a.Text));
        foreach (var (token, id) in vocab)
            if (id < 0 || id >= tokens) throw new TokenizerFormatException(path, $"model.vocab[{token}]", $"id {id} is outside [0, {tokens})");
        foreach (var (token, id, _) in added)
            if (id < 0 || id >= tokens) throw new TokenizerFormatException(path, $"added_tokens[{token}]", $"id {id} is outside [0, {tokens})");
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var pieces = new string[size];
        var bytes = new byte[size][];
        foreach (var (token, id) in vocab)
        {
            pieces[id] = token;
            bytes[id] = ByteLevelAlphabet.ToBytes(token) ?? throw new TokenizerFormatException(path, $"model.vocab[{token}]", "has characters outside the byte-level alphabet");
        }
        foreach (var (text, id, _) in added)
        {
            pieces[id] = text;
            bytes[id] = Encoding.UTF8.GetBytes(text);
        }
        for (int id = 0; id < size; id++)
            if (pieces[id] is null) throw new TokenizerFormatException(path, "model.vocab", $"no token has id {id}");

        var byteIds = new int[256];
        for (int b = 0; b < 256; b++)
            byteIds[b] = vocab.TryGetValue(ByteLevelAlphabet.ByteToChar[b].ToString(), out int id) ? id : -1;

        var merges = new MergeTable();
        for (int rank = 0; rank < mergeList.Count; rank++)
        {
            var (a, b) = mergeList[rank];
            int left = vocab.TryGetValue(a, out int l2) ? l2 : throw new TokenizerFormatException(path, $"model.merges[{rank}]", $"names unknown token '{a}'");
            int right = vocab.TryGetValue(b, out int r2) ? r2 : throw new TokenizerFormatException(path, $"model.merges[{rank}]", $"names unknown token '{b}'");
            int merged = vocab.TryGetValue(a + b, out int m) ? m : throw new TokenizerFormatException(path, $"model.merges[{rank}]", $"result '{a + b}' is not in the vocabulary");
            merges.Add(left, right, rank, merged);
        }

        RequireEveryByte(path, byteIds);
        PreTokenizer preTokenizer;
        try { preTokenizer = new PreTokenizer(pattern); }
        catch (ArgumentException e) { throw new TokenizerFormatException(path, "pre_tokenizer.pattern", $"'{pattern}' is not a valid regular expression: {e.Message}", e); }
        return new ByteLevelBpeTokenizer(pieces, bytes, byteIds, merges, preTokenizer, addPrefixSpace, added)
        {
            BosId = bos,
            EosId = eos,
            _mergeList = [.. mergeList],
        };
    }

    /// <summary>Tokens matched whole before pre-tokenizing (a tokenizer.json's <c>added_tokens</c>), with whether each is special.</summary>
    public IReadOnlyList<(string Text, int Id, bool Special)> AddedTokens => _addedTokens;

    /// <summary>The merge list in rank order; null for a tiktoken vocabulary, whose merges are implied by its ranks.</summary>
    public IReadOnlyList<(string Left, string Right)>? Merges => _mergeList;

    private static (string? Pattern, bool AddPrefixSpace) ReadPreTokenizer(string path, JsonElement element)
    {
        if (element.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return (null, false);
        string? pattern = null;
        bool prefix = false;
        void Visit(JsonElement e)
        {
            string type = e.GetProperty("type").GetString() ?? "";
            switch (type)
            {
                case "Sequence":
                    foreach (var inner in e.GetProperty("pretokenizers").EnumerateArray()) Visit(inner);
                    break;
                case "ByteLevel":
                    prefix |= e.TryGetProperty("add_prefix_space", out var p) && p.GetBoolean();
                    if (!e.TryGetProperty("use_regex", out var r) || r.GetBoolean()) Set(PreTokenizer.Gpt2Pattern);
                    break;
                case "Split":
                    string behavior = e.TryGetProperty("behavior", out var b) ? b.GetString() ?? "" : "";
                    if (behavior != "Isolated" || (e.TryGetProperty("invert", out var inv) && inv.GetBoolean()))
                        throw new TokenizerFormatException(path, "pre_tokenizer.Split", $"behaviour '{behavior}' (invert) is not supported (Isolated)");
                    var patternElement = e.GetProperty("pattern");
                    Set(patternElement.TryGetProperty("Regex", out var regex) ? regex.GetString()!
                        : System.Text.RegularExpressions.Regex.Escape(patternElement.GetProperty("String").GetString()!));
                    break;
                default:
                    throw new TokenizerFormatException(path, "pre_tokenizer", $"type '{type}' is not supported (ByteLevel, Split, Sequence)");
            }
        }
        void Set(string value)
        {
            if (pattern is not null && pattern != value) throw new TokenizerFormatException(path, "pre_tokenizer", "more than one splitting regex is not supported");
            pattern = value;
        }
        Visit(element);
        return (pattern, prefix);
    }

    /// <summary>
    /// Reads a tiktoken file (lines of base64 token bytes and rank; rank is the id) with the Llama-3 pre-tokenizer.
    /// Special tokens follow the ranks: Llama 3's 256 reserved names unless <paramref name="specialTokens"/> is given.
    /// </summary>
    public static ByteLevelBpeTokenizer LoadTiktoken(string path, IReadOnlyList<string>? specialTokens = null, string pattern = PreTokenizer.Llama3Pattern)
    {
        var byBytes = new Dictionary<string, int>(); // key: bytes as Latin-1 chars
        var lines = File.ReadAllLines(path);
        var list = new List<(byte[] Bytes, int Rank)>(lines.Length);
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            var parts = lines[i].Split(' ');
            byte[] bytes;
            int rank;
            try
            {
                if (parts.Length != 2) throw new FormatException("expected 'base64 rank'");
                bytes = Convert.FromBase64String(parts[0]);
                if (!int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out rank))
                    throw new FormatException($"rank '{parts[1]}' is not an integer in [0, {int.MaxValue}]");
            }
            catch (FormatException e)
            {
                throw new TokenizerFormatException(path, $"line {i + 1}", e.Message, e);
            }
            // Ranks are the ids: gaps are allowed (ids no encoding produces), an absurd rank would ask for a huge table.
            int most = lines.Length + (1 << 20);
            if (bytes.Length == 0 || rank >= most) throw new TokenizerFormatException(path, $"line {i + 1}", $"empty token, or rank {rank} not below {most}");
            if (!byBytes.TryAdd(Encoding.Latin1.GetString(bytes), rank)) throw new TokenizerFormatException(path, $"line {i + 1}", "duplicate token");
            list.Add((bytes, rank));
        }
        if (list.Count == 0) throw new TokenizerFormatException(path, "ranks", "the file has no tokens");
        int baseSize = list.Max(x => x.Rank) + 1;
        var specials = specialTokens ?? Llama3SpecialTokens();
        int size = baseSize + specials.Count;
        var pieces = new string[size];
        var tokenBytes = new byte[size][];
        foreach (var (bytes, rank) in list)
        {
            tokenBytes[rank] = bytes;
            pieces[rank] = string.Concat(bytes.Select(b => ByteLevelAlphabet.ByteToChar[b]));
        }
        for (int id = 0; id < baseSize; id++)
        {
            // A rank with no token (a gap in the file) can never be produced by encoding.
            tokenBytes[id] ??= [];
            pieces[id] ??= "";
        }
        var added = specials.Select((name, i) => (name, baseSize + i, true)).ToList();
        foreach (var (name, id, _) in added)
        {
            pieces[id] = name;
            tokenBytes[id] = Encoding.UTF8.GetBytes(name);
        }

        var byteIds = new int[256];
        for (int b = 0; b < 256; b++) byteIds[b] = byBytes.TryGetValue(((char)b).ToString(), out int id) ? id : -1;
        RequireEveryByte(path, byteIds);
        var merges = new MergeTable();
        foreach (var (key, rank) in byBytes)
            for (int split = 1; split < key.Length; split++)
                if (byBytes.TryGetValue(key[..split], out int left) && byBytes.TryGetValue(key[split..], out int right))
                    merges.Add(left, right, rank, rank);

        return new ByteLevelBpeTokenizer(pieces, tokenBytes, byteIds, merges, new PreTokenizer(pattern), false, added)
        {
            BosId = specials.Count > 0 ? baseSize : null,
            EosId = specials.Count > 1 ? baseSize + 1 : null,
        };
    }

    /// <summary>Llama 3.1's 256 special tokens, in id order after the ranks.</summary>
    public static IReadOnlyList<string> Llama3SpecialTokens()
    {
        string[] named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"];
        return [.. named, .. Enumerable.Range(3, 256 - named.Length).Select(i => $"<|reserved_special_token_{i}|>")];
    }

    /// <inheritdoc />
    public int[] Encode(string text, EncodeOptions options = default)
    {
        int[] buffer = ScratchArrays<int>.Rent(Encoding.UTF8.GetMaxByteCount(text.Length) + 4);
        try
        {
            return buffer.AsSpan(0, Encode(text, buffer, options)).ToArray();
        }
        finally
        {
            ScratchArrays<int>.Return(buffer);
        }
    }

    /// <inheritdoc />
    public int Encode(ReadOnlySpan<char> text, Span<int> destination, EncodeOptions options = default)
    {
        var output = new Output(destination);
        if (options.AddBos) output.Put(BosId ?? throw new InvalidOperationException("This vocabulary has no BOS token."));

        char[]? prefixed = null;
        if (_addPrefixSpace && !text.IsEmpty && text[0] != ' ')
        {
            prefixed = ScratchArrays<char>.Rent(text.Length + 1);
            prefixed[0] = ' ';
            text.CopyTo(prefixed.AsSpan(1));
            text = prefixed.AsSpan(0, text.Length + 1);
        }
        try
        {
            int segment = 0;
            for (int i = 0; i < text.Length; i++)
            {
                if (!_addedFirstChars[text[i]]) continue;
                foreach (var (added, id) in _added)
                {
                    if (!text[i..].StartsWith(added, StringComparison.Ordinal)) continue;
                    EncodeText(text[segment..i], ref output);
                    output.Put(id);
                    segment = i + added.Length;
                    i = segment - 1;
                    break;
                }
            }
            EncodeText(text[segment..], ref output);
        }
        finally
        {
            if (prefixed is not null) ScratchArrays<char>.Return(prefixed);
        }

        if (options.AddEos) output.Put(EosId ?? throw new InvalidOperationException("This vocabulary has no EOS token."));
        return output.Count;
    }

    private void EncodeText(ReadOnlySpan<char> text, ref Output output)
    {
        var state = new WordState(this, output);
        _preTokenizer.Split(text, ref state, static (word, ref s) => s.Tokenizer.EncodeWord(word, ref s.Output));
        output = state.Output;
    }

    /// <summary>Byte-level BPE encodes any text only if each of the 256 bytes is a token; a file without them is refused at load.</summary>
    private static void RequireEveryByte(string path, int[] byteIds)
    {
        int missing = Array.IndexOf(byteIds, -1);
        if (missing >= 0) throw new TokenizerFormatException(path, "vocabulary", $"has no token for the byte 0x{missing:X2} (byte-level BPE needs one for each of the 256 bytes)");
    }

    private void EncodeWord(ReadOnlySpan<char> word, ref Output output)
    {
        if (_cache.TryGet(word, out int[] cached))
        {
            foreach (int id in cached) output.Put(id);
            return;
        }
        byte[] utf8 = ScratchArrays<byte>.Rent(Encoding.UTF8.GetMaxByteCount(word.Length));
        int[] symbols = ScratchArrays<int>.Rent(Encoding.UTF8.GetMaxByteCount(word.Length));
        try
        {
            int n = Encoding.UTF8.GetBytes(word, utf8);
            for (int i = 0; i < n; i++)
                symbols[i] = _byteIds[utf8[i]];   // every byte has one (RequireEveryByte)
            n = _merges.Apply(symbols.AsSpan(0, n), default);
            var ids = symbols.AsSpan(0, n);
            foreach (int id in ids) output.Put(id);
            _cache.Add(word, ids);
        }
        finally
        {
            ScratchArrays<byte>.Return(utf8);
            ScratchArrays<int>.Return(symbols);
        }
    }

    /// <inheritdoc />
    public string Decode(ReadOnlySpan<int> ids) => TokenBytesDecoder.Decode(this, ids);

    /// <inheritdoc />
    public ReadOnlySpan<byte> TokenBytes(int id) => _bytes[id];

    /// <inheritdoc />
    public string PieceOf(int id) => _pieces[id];

    /// <summary>The caller's destination and how much of it is filled.</summary>
    private ref struct Output(Span<int> destination)
    {
        private readonly Span<int> _destination = destination;
        public int Count;

        public void Put(int id)
        {
            if (Count >= _destination.Length) throw new ArgumentException($"The destination holds {_destination.Length} ids; the text needs more.", "destination");
            _destination[Count++] = id;
        }
    }

    private ref struct WordState(ByteLevelBpeTokenizer tokenizer, Output output)
    {
        public readonly ByteLevelBpeTokenizer Tokenizer = tokenizer;
        public Output Output = output;
    }
}
