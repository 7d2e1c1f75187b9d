namespace KvPacket.Engine.Forward;

/// <summary>Which positions of a chunk get logits.</summary>
public enum LogitsFor
{
    /// <summary>Only the chunk's last token (prefill before sampling, and decode).</summary>
    LastToken,
    /// <summary>Every token of the chunk (scoring, parity tests, distillation).</summary>
    AllTokens,
}

/// <summary>
/// The input of one forward step: a ragged list of chunks, each some new tokens appended to one sequence.
/// A decode step is a one-token chunk; prefill is a longer one; both mix freely. A chunk may also be soft tokens:
/// input embeddings given directly (trained adapters such as KV Packet's header/trailer or KVLink's link tokens),
/// which stand at token id <see cref="SoftToken"/>. Reused across steps.
/// </summary>
public sealed class ForwardBatch
{
    /// <summary>The token id recorded for a soft token (its embedding comes from <see cref="Embeddings"/>).</summary>
    public const int SoftToken = -1;

    private readonly int[] _tokens;
    private readonly float[] _embeddings;
    private readonly int _hiddenSize;
    private readonly Sequence[] _sequences;
    private readonly int[] _starts;
    private readonly int[] _lengths;
    private readonly LogitsFor[] _logits;

    /// <summary>
    /// Creates a batch holding up to <paramref name="maxTokens"/> tokens in <paramref name="maxChunks"/> chunks; soft-token
    /// chunks need the model's <paramref name="hiddenSize"/>.
    /// </summary>
    public ForwardBatch(int maxTokens, int maxChunks, int hiddenSize = 0)
    {
        _tokens = new int[maxTokens];
        _hiddenSize = hiddenSize;
        _embeddings = new float[hiddenSize > 0 ? (long)maxTokens * hiddenSize : 0];
        _sequences = new Sequence[maxChunks];
        _starts = new int[maxChunks];
        _lengths = new int[maxChunks];
        _logits = new LogitsFor[maxChunks];
    }

    /// <summary>Chunks in the batch.</summary>
    public int ChunkCount { get; private set; }

    /// <summary>Tokens in the batch.</summary>
    public int TokenCount { get; private set; }

    /// <summary>Rows of logits the step will produce.</summary>
    public int LogitRowCount { get; private set; }

    /// <summary>Empties the batch.</summary>
    public void Clear() => ChunkCount = TokenCount = LogitRowCount = 0;

    /// <summary>Appends <paramref name="tokens"/> to <paramref name="sequence"/> in this step.</summary>
    public void Add(Sequence sequence, ReadOnlySpan<int> tokens, LogitsFor logits = LogitsFor.LastToken)
    {
        if (tokens.IsEmpty) throw new ArgumentException("A chunk needs at least one token.", nameof(tokens));
        foreach (int token in tokens)
            if (token < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} is negative; soft tokens go through AddSoftTokens.");
        tokens.CopyTo(AddChunk(sequence, tokens.Length, logits));
    }

    /// <summary>Appends soft tokens to <paramref name="sequence"/>: <paramref name="embeddings"/> is [n, hidden], used in place of token embeddings.</summary>
    public void AddSoftTokens(Sequence sequence, ReadOnlySpan<float> embeddings, LogitsFor logits = LogitsFor.LastToken)
    {
        if (_hiddenSize == 0) throw new InvalidOperationException("This batch was created without a hidden size, so it cannot hold soft tokens.");
        if (embeddings.IsEmpty || embeddings.Length % _hiddenSize != 0)
            throw new ArgumentException($"Soft tokens need a whole number of {_hiddenSize}-wide embeddings; got {embeddings.Length} floats.", nameof(embeddings));
        int count = embeddings.Length / _hiddenSize;
        AddChunk(sequence, count, logits).Fill(SoftToken);
        embeddings.CopyTo(_embeddings.AsSpan((TokenCount - count) * _hiddenSize));
    }

    /// <summary>Records a chunk of <paramref name="count"/> tokens and returns where its token ids go.</summary>
    private Span<int> AddChunk(Sequence sequence, int count, LogitsFor logits)
    {
        if (ChunkCount == _sequences.Length) throw new InvalidOperationException($"The batch holds at most {_sequences.Length} chunks.");
        if (TokenCount + count > _tokens.Length)
            throw new InvalidOperationException($"The batch holds at most {_tokens.Length} tokens; {TokenCount + count} were given.");
        for (int c = 0; c < ChunkCount; c++)
            if (ReferenceEquals(_sequences[c], sequence)) throw new InvalidOperationException("A sequence may appear in a batch only once.");
        var ids = _tokens.AsSpan(TokenCount, count);
        _sequences[ChunkCount] = sequence;
        _starts[ChunkCount] = TokenCount;
        _lengths[ChunkCount] = count;
        _logits[ChunkCount] = logits;
        ChunkCount++;
        TokenCount += count;
        LogitRowCount += logits == LogitsFor.AllTokens ? count : 1;
        return ids;
    }

    /// <summary>The embedding of soft token <paramref name="index"/> of <see cref="Tokens"/>.</summary>
    public ReadOnlySpan<float> Embeddings(int index) => _embeddings.AsSpan(index * _hiddenSize, _hiddenSize);

    /// <summary>Every token of the batch, chunk after chunk (<see cref="SoftToken"/> for soft tokens).</summary>
    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, TokenCount);

    /// <summary>The sequence of chunk <paramref name="chunk"/>.</summary>
    public Sequence SequenceOf(int chunk) => _sequences[chunk];

    /// <summary>First token index of chunk <paramref name="chunk"/> in <see cref="Tokens"/>.</summary>
    public int StartOf(int chunk) => _starts[chunk];

    /// <summary>Tokens in chunk <paramref name="chunk"/>.</summary>
    public int LengthOf(int chunk) => _lengths[chunk];

    /// <summary>Which of chunk <paramref name="chunk"/>'s tokens get logits.</summary>
    public LogitsFor LogitsOf(int chunk) => _logits[chunk];
}
