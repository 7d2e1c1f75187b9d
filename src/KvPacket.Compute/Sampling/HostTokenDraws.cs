namespace KvPacket.Compute.Sampling;

/// <summary>
/// Token draws on the host, for a backend whose logits are there or come back there (the CPU's own; a GPU's without a
/// draw kernel): rows of logits to fill, then <see cref="TokenDraw"/>'s rule on each. Memory is made on first use and
/// reused: steady steps allocate nothing.
/// </summary>
public sealed class HostTokenDraws(int maxRows, int vocabSize)
{
    private float[]? _logits;
    private readonly TokenDraw.Scratch _scratch = new(vocabSize);

    /// <summary>Room for <paramref name="rows"/> rows of logits, [rows, vocabulary], for the step to fill.</summary>
    public Span<float> Logits(int rows) => (_logits ??= new float[(long)maxRows * vocabSize]).AsSpan(0, rows * vocabSize);

    /// <summary><paramref name="next"/>[r] = the token <paramref name="draws"/>[r] chooses from row r of <see cref="Logits"/>.</summary>
    public void Choose(ReadOnlySpan<TokenDraw> draws, Span<int> next)
    {
        var logits = Logits(draws.Length);
        for (int r = 0; r < draws.Length; r++) next[r] = draws[r].Choose(logits.Slice(r * vocabSize, vocabSize), _scratch);
    }
}
