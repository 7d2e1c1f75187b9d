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
/// A decode step is a one-token chunk; prefill is a longer one; both mix freely. Reused across steps.
/// </summary>
public sealed class ForwardBatch
{
    private readonly int[] _tokens;
    private readonly Sequence[] _sequences;
    private readonly int[] _starts;
    private readonly int[] _lengths;
    private readonly LogitsFor[] _logits;

    /// <summary>Creates a batch holding up to <paramref name="maxTokens"/> tokens in <paramref name="maxChunks"/> chunks.</summary>
    public ForwardBatch(int maxTokens, int maxChunks)
    {
        _tokens = new int[maxTokens];
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
        if (ChunkCount == _sequences.Length) throw new InvalidOperationException($"The batch holds at most {_sequences.Length} chunks.");
        if (TokenCount + tokens.Length > _tokens.Length)
            throw new InvalidOperationException($"The batch holds at most {_tokens.Length} tokens; {TokenCount + tokens.Length} were given.");
        for (int c = 0; c < ChunkCount; c++)
            if (ReferenceEquals(_sequences[c], sequence)) throw new InvalidOperationException("A sequence may appear in a batch only once.");
        tokens.CopyTo(_tokens.AsSpan(TokenCount));
        _sequences[ChunkCount] = sequence;
        _starts[ChunkCount] = TokenCount;
        _lengths[ChunkCount] = tokens.Length;
        _logits[ChunkCount] = logits;
        ChunkCount++;
        TokenCount += tokens.Length;
        LogitRowCount += logits == LogitsFor.AllTokens ? tokens.Length : 1;
    }

    /// <summary>Every token of the batch, chunk after chunk.</summary>
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
