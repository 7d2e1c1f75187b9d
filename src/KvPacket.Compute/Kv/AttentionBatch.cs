namespace KvPacket.Compute.Kv;

/// <summary>
/// Where each token of a ragged batch sits: its sequence's block table, its global position, and the block slot that
/// receives its own K and V. Token t attends causally to positions [0, Positions[t]] of table Tables[Sequences[t]].
/// Sized once for the largest batch and refilled each step, so steps allocate nothing.
/// </summary>
public sealed class AttentionBatch
{
    /// <summary>Creates a batch of at most <paramref name="maxTokens"/> tokens from <paramref name="maxSequences"/> sequences.</summary>
    public AttentionBatch(int maxTokens, int maxSequences)
    {
        Positions = new int[maxTokens];
        Sequences = new int[maxTokens];
        Blocks = new int[maxTokens];
        Slots = new int[maxTokens];
        Tables = new KvBlockEntry[maxSequences][];
        TableLengths = new int[maxSequences];
    }

    /// <summary>Tokens in this step.</summary>
    public int TokenCount { get; set; }

    /// <summary>Global position of each token in its sequence.</summary>
    public int[] Positions { get; }

    /// <summary>Index into <see cref="Tables"/> of each token's sequence.</summary>
    public int[] Sequences { get; }

    /// <summary>Block that receives each token's K and V.</summary>
    public int[] Blocks { get; }

    /// <summary>Slot in that block.</summary>
    public int[] Slots { get; }

    /// <summary>Each sequence's block table, entries in position order covering positions contiguously from 0.</summary>
    public KvBlockEntry[][] Tables { get; }

    /// <summary>Valid entries of each table.</summary>
    public int[] TableLengths { get; }
}
