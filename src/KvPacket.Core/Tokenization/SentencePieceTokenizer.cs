using System.Buffers;
using System.Text;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// SentencePiece BPE read from <c>tokenizer.model</c> (the SentencePiece ModelProto): pieces with scores and types,
/// the normaliser's add-dummy-prefix / remove-extra-whitespaces / escape-whitespaces settings, and byte fallback
/// through <c>&lt;0xNN&gt;</c> pieces. Encoding starts from single characters and repeatedly merges the adjacent pair
/// whose joined piece has the highest score (leftmost on ties); characters with no piece become their UTF-8 bytes.
/// </summary>
public sealed class SentencePieceTokenizer : ITokenizer
{
    private const char Whitespace = '\u2581'; // ▁
    private readonly string[] _pieces;
    private readonly float[] _scores;
    private readonly int[] _types;
    private readonly byte[][] _bytes;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int[] _byteIds;
    private readonly MergeTable _merges = new();
    private readonly bool _addDummyPrefix, _removeExtraWhitespaces, _escapeWhitespaces;
    private readonly int _unkId;
    private readonly bool _splitsAtWhitespace;
    private readonly WordCache _cache = new();

    private SentencePieceTokenizer(string file, List<(string Piece, float Score, int Type)> pieces, bool addDummyPrefix,
        bool removeExtraWhitespaces, bool escapeWhitespaces, Dictionary<string, int> special)
    {
        _addDummyPrefix = addDummyPrefix;
        _removeExtraWhitespaces = removeExtraWhitespaces;
        _escapeWhitespaces = escapeWhitespaces;
        SpecialTokens = special;
        _pieces = pieces.Select(p => p.Piece).ToArray();
        _scores = pieces.Select(p => p.Score).ToArray();
        _types = pieces.Select(p => p.Type).ToArray();
        _bytes = new byte[pieces.Count][];
        _byteIds = Enumerable.Repeat(-1, 256).ToArray();
        var byText = new Dictionary<string, int>();
        _unkId = -1;
        for (int id = 0; id < pieces.Count; id++)
        {
            var (piece, _, type) = pieces[id];
            switch (type)
            {
                case PieceType.Byte:
                    if (piece.Length != 6 || !piece.StartsWith("<0x") || !byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                        throw new TokenizerFormatException(file, $"piece {id}", $"byte piece '{piece}' is not <0xNN>");
                    _byteIds[b] = id;
                    _bytes[id] = [b];
                    break;
                case PieceType.Control or PieceType.Unused:
                    _bytes[id] = [];
                    break;
                case PieceType.Unknown:
                    _unkId = id;
                    _bytes[id] = Encoding.UTF8.GetBytes(" \u2047 ");
                    break;
                default:
                    byText.TryAdd(piece, id);
                    _bytes[id] = Encoding.UTF8.GetBytes(piece.Replace(Whitespace, ' '));
                    break;
            }
        }
        if (_unkId < 0 && _byteIds.Contains(-1))
            throw new TokenizerFormatException(file, "pieces", "there is neither an unknown piece nor a byte piece for every byte, so some text could not be encoded");
        _lookup = byText.GetAlternateLookup<ReadOnlySpan<char>>();
        _splitsAtWhitespace = byText.Keys.All(piece => piece.TrimStart(Whitespace).IndexOf(Whitespace) < 0);

        // Merges: every split of a piece into two pieces; rank by score, highest first.
        var ranks = pieces.Select(p => p.Score).Distinct().OrderDescending().Select((score, rank) => (score, rank)).ToDictionary(x => x.score, x => x.rank);
        foreach (var (piece, id) in byText)
        {
            for (int split = 1; split < piece.Length; split++)
            {
                if (char.IsLowSurrogate(piece[split])) continue;
                if (byText.TryGetValue(piece[..split], out int left) && byText.TryGetValue(piece[split..], out int right))
                    _merges.Add(left, right, ranks[pieces[id].Score], id);
            }
        }
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
    public bool DecodeStripsLeadingSpace => _addDummyPrefix;

    /// <summary>Reads a SentencePiece <c>tokenizer.model</c>.</summary>
    public static SentencePieceTokenizer Load(string path)
    {
        byte[] data = File.ReadAllBytes(path);
        var pieces = new List<(string, float, int)>();
        bool addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
        string normaliser = "";
        int modelType = 1;
        var reader = new ProtobufReader(data, path);
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadTag();
            if (field == 1 && wire == 2) pieces.Add(ReadPiece(path, reader.ReadBytes(), pieces.Count));
            else if (field == 2 && wire == 2) modelType = ReadModelType(path, reader.ReadBytes());
            else if (field == 3 && wire == 2)
            {
                var spec = new ProtobufReader(reader.ReadBytes(), path);
                while (!spec.AtEnd)
                {
                    var (f, w) = spec.ReadTag();
                    switch (f)
                    {
                        case 1 when w == 2: normaliser = spec.ReadString(); break;
                        case 3 when w == 0: addDummyPrefix = spec.ReadVarint() != 0; break;
                        case 4 when w == 0: removeExtraWhitespaces = spec.ReadVarint() != 0; break;
                        case 5 when w == 0: escapeWhitespaces = spec.ReadVarint() != 0; break;
                        default: spec.Skip(w); break;
                    }
                }
            }
            else reader.Skip(wire);
        }
        if (pieces.Count == 0) throw new TokenizerFormatException(path, "pieces", "the model has no pieces (not a SentencePiece model?)");
        if (modelType != 2) throw new TokenizerFormatException(path, "trainer_spec.model_type", $"{modelType} is not BPE (2); only SentencePiece BPE is supported");
        if (normaliser is not ("" or "identity"))
            throw new TokenizerFormatException(path, "normalizer_spec.name", $"'{normaliser}' normalisation is not supported (identity)");

        return Create(path, pieces, addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces, null, null);
    }

    /// <summary>
    /// A SentencePiece BPE vocabulary given piece by piece (a GGUF file's <c>tokenizer.ggml.*</c> keys), normalised as
    /// llama.cpp does: whitespace escaped, runs of spaces kept, a dummy prefix when <paramref name="addDummyPrefix"/>.
    /// </summary>
    public static SentencePieceTokenizer FromPieces(string source, IReadOnlyList<string> pieces, IReadOnlyList<float> scores, IReadOnlyList<int> types,
        bool addDummyPrefix, int? bos, int? eos) =>
        Create(source, pieces.Select((p, i) => (p, scores[i], types[i])).ToList(), addDummyPrefix, removeExtraWhitespaces: false, escapeWhitespaces: true, bos, eos);

    private static SentencePieceTokenizer Create(string path, List<(string Piece, float Score, int Type)> pieces, bool addDummyPrefix,
        bool removeExtraWhitespaces, bool escapeWhitespaces, int? bos, int? eos)
    {
        var special = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++)
            if (pieces[i].Type is PieceType.Control or PieceType.Unknown) special[pieces[i].Piece] = i;
        return new SentencePieceTokenizer(path, pieces, addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces, special)
        {
            BosId = bos ?? (special.TryGetValue("<s>", out int b) ? b : null),
            EosId = eos ?? (special.TryGetValue("</s>", out int e) ? e : null),
        };
    }

    private static (string, float, int) ReadPiece(string path, ReadOnlySpan<byte> message, int index)
    {
        var reader = new ProtobufReader(message, path);
        string? piece = null;
        float score = 0;
        int type = PieceType.Normal;
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadTag();
            if (field == 1 && wire == 2) piece = reader.ReadString();
            else if (field == 2 && wire == 5) score = reader.ReadFloat();
            else if (field == 3 && wire == 0) type = (int)reader.ReadVarint();
            else reader.Skip(wire);
        }
        return (piece ?? throw new TokenizerFormatException(path, $"piece {index}", "has no text"), score, type);
    }

    private static int ReadModelType(string path, ReadOnlySpan<byte> message)
    {
        var reader = new ProtobufReader(message, path);
        int type = 1;
        while (!reader.AtEnd)
        {
            var (field, wire) = reader.ReadTag();
            if (field == 3 && wire == 0) type = (int)reader.ReadVarint();
            else reader.Skip(wire);
        }
        return type;
    }

    /// <inheritdoc />
    public int[] Encode(string text, EncodeOptions options = default)
    {
        int[] buffer = ArrayPool<int>.Shared.Rent(2 * Encoding.UTF8.GetMaxByteCount(text.Length) + 4);
        try
        {
            return buffer.AsSpan(0, Encode(text, buffer, options)).ToArray();
        }
        finally
        {
            ArrayPool<int>.Shared.Return(buffer);
        }
    }

    /// <inheritdoc />
    public int Encode(ReadOnlySpan<char> text, Span<int> destination, EncodeOptions options = default)
    {
        int count = 0;
        if (options.AddBos) Put(destination, ref count, BosId ?? throw new InvalidOperationException("This vocabulary has no BOS token."));

        char[] normalised = ArrayPool<char>.Shared.Rent(text.Length + 1);
        try
        {
            var all = normalised.AsSpan(0, Normalise(text, normalised));
            if (!_splitsAtWhitespace) EncodeWord(all, destination, ref count, cache: false);
            else
            {
                // No piece has ▁ after another character, so no piece crosses the start of a ▁-run: words are independent.
                int start = 0;
                for (int i = 1; i < all.Length; i++)
                {
                    if (all[i] != Whitespace || all[i - 1] == Whitespace) continue;
                    EncodeWord(all[start..i], destination, ref count, cache: true);
                    start = i;
                }
                if (start < all.Length) EncodeWord(all[start..], destination, ref count, cache: true);
            }
        }
        finally
        {
            ArrayPool<char>.Shared.Return(normalised);
        }

        if (options.AddEos) Put(destination, ref count, EosId ?? throw new InvalidOperationException("This vocabulary has no EOS token."));
        return count;
    }

    private void EncodeWord(ReadOnlySpan<char> word, Span<int> destination, ref int count, bool cache)
    {
        if (cache && _cache.TryGet(word, out int[] cached))
        {
            foreach (int id in cached) Put(destination, ref count, id);
            return;
        }
        int[] symbols = ArrayPool<int>.Shared.Rent(4 * word.Length + 4);
        int[] starts = ArrayPool<int>.Shared.Rent(word.Length + 1);
        try
        {
            int n = 0;
            for (int i = 0; i < word.Length;)
            {
                int width = i + 1 < word.Length && char.IsSurrogatePair(word[i], word[i + 1]) ? 2 : 1;
                symbols[n] = _lookup.TryGetValue(word.Slice(i, width), out int id) ? id : -1;
                starts[n++] = i;
                i += width;
            }
            n = _merges.Apply(symbols.AsSpan(0, n), starts.AsSpan(0, n));

            // Expand characters with no piece into their UTF-8 byte pieces (or <unk>), in place from the back.
            int total = 0;
            Span<byte> utf8 = stackalloc byte[8];
            for (int s = 0; s < n; s++) total += symbols[s] >= 0 ? 1 : Encoding.UTF8.GetByteCount(word[starts[s]..(s + 1 < n ? starts[s + 1] : word.Length)]);
            for (int s = n - 1, w = total; s >= 0; s--)
            {
                if (symbols[s] >= 0)
                {
                    symbols[--w] = symbols[s];
                    continue;
                }
                int byteCount = Encoding.UTF8.GetBytes(word[starts[s]..(s + 1 < n ? starts[s + 1] : word.Length)], utf8);
                for (int b = byteCount - 1; b >= 0; b--)
                    symbols[--w] = _byteIds[utf8[b]] >= 0 ? _byteIds[utf8[b]] : _unkId >= 0 ? _unkId : throw new InvalidOperationException("No byte or unknown piece for a character.");
            }
            var ids = symbols.AsSpan(0, total);
            foreach (int id in ids) Put(destination, ref count, id);
            if (cache) _cache.Add(word, ids);

        }
        finally
        {
            ArrayPool<int>.Shared.Return(symbols);
            ArrayPool<int>.Shared.Return(starts);
        }
    }

    /// <summary>Applies the normaliser settings and returns the normalised length (at most text + 1).</summary>
    private int Normalise(ReadOnlySpan<char> text, Span<char> output)
    {
        if (_removeExtraWhitespaces) text = text.Trim(' ');
        if (text.IsEmpty) return 0;
        int n = 0;
        char space = _escapeWhitespaces ? Whitespace : ' ';
        if (_addDummyPrefix) output[n++] = space;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == ' ')
            {
                if (_removeExtraWhitespaces && i > 0 && text[i - 1] == ' ') continue;
                output[n++] = space;
            }
            else output[n++] = c;
        }
        return n;
    }

    private static void Put(Span<int> destination, ref int count, int id)
    {
        if (count >= destination.Length) throw new ArgumentException($"The destination holds {destination.Length} ids; the text needs more.", nameof(destination));
        destination[count++] = id;
    }

    /// <inheritdoc />
    public string Decode(ReadOnlySpan<int> ids) => TokenBytesDecoder.Decode(this, ids);

    /// <inheritdoc />
    public ReadOnlySpan<byte> TokenBytes(int id) => _bytes[id];

    /// <inheritdoc />
    public string PieceOf(int id) => _pieces[id];

    /// <summary>Piece <paramref name="id"/>'s merge score.</summary>
    public float ScoreOf(int id) => _scores[id];

    /// <summary>Piece <paramref name="id"/>'s SentencePiece type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).</summary>
    public int TypeOf(int id) => _types[id];

    private static class PieceType
    {
        public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;
    }
}
