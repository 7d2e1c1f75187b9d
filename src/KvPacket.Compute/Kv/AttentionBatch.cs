namespace KvPacket.Compute.Kv;

/// <summary>
/// Where each token of a ragged batch sits: its sequence's block table and its position in that sequence.
/// Token t attends causally to positions [0, Positions[t]] of table BlockTables[Sequences[t]].
/// Sized once for the largest batch and refilled each step, so steps allocate nothing.
/// </summary>
public sealed class AttentionBatch
{
    /// <summary>Creates a batch of at most <paramref name="maxTokens"/> tokens from <paramref name="maxSequences"/> sequences.</summary>
    public AttentionBatch(int maxTokens, int maxSequences)
    {
        Positions = new int[maxTokens];
        Sequences = new int[maxTokens];
        BlockTables = new int[maxSequences][];
    }

    /// <summary>Tokens in this step.</summary>
    public int TokenCount { get; set; }

    /// <summary>Position of each token in its sequence.</summary>
    public int[] Positions { get; }

    /// <summary>Index into <see cref="BlockTables"/> of each token's sequence.</summary>
    public int[] Sequences { get; }

    /// <summary>Block ids of each sequence, in position order (position p lives in block p / BlockSize).</summary>
    public int[][] BlockTables { get; }
}
