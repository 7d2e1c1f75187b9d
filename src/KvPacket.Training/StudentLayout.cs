using KvPacket.Engine.Rag;

namespace KvPacket.Training;

/// <summary>
/// The student sequence of one distillation example, as both trainers run it (the CPU <see cref="TrainingModel{T}"/>
/// and the GPU <see cref="Cuda.CudaTrainingModel"/>): rows at global positions 0..n−1, each a token or an adapter row,
/// and for each row the first row it may attend to (it sees [<see cref="FirstVisible"/>[i], i]):
/// <list type="bullet">
/// <item>KV Packet: <c>[prefix] [H D1 T] [H D2 T] … [continuation]</c>; a packet row sees its own packet only.</item>
/// <item>KVLink: <c>[prefix] [D1] [L] [D2] [L] … [continuation]</c>; a document row sees its own document, link and
/// continuation rows see everything before them.</item>
/// </list>
/// Every packet, and so every visible set, is one contiguous run of rows: a start index per row is the whole mask.
/// </summary>
/// <param name="Source">Per row: a token id (≥ 0), or −1 − r for adapter row r.</param>
/// <param name="FirstVisible">Per row: the first row it attends to.</param>
/// <param name="ContinuationStart">The row of the continuation's first token.</param>
public sealed record StudentLayout(int[] Source, int[] FirstVisible, int ContinuationStart)
{
    /// <summary>Rows in the sequence.</summary>
    public int Length => Source.Length;

    /// <summary>Whether row <paramref name="i"/> attends to row <paramref name="j"/>.</summary>
    public bool Visible(int i, int j) => j <= i && j >= FirstVisible[i];

    /// <summary>The layout of <paramref name="example"/> in <paramref name="mode"/> with the given adapter sizes.</summary>
    public static StudentLayout Of(DistillationExample example, RagMode mode, int header, int trailer, int links)
    {
        if (mode is not (RagMode.KvPacket or RagMode.KvLink)) throw new ArgumentException($"a student is KV Packet or KVLink, not {mode}", nameof(mode));
        return Of(example.Prefix, example.Documents, example.Continuation, mode, header, trailer, links);
    }

    /// <summary>
    /// The rows of <c>[prefix] documents… [continuation]</c> in <paramref name="mode"/>: <see cref="RagMode.Full"/> (the plain
    /// concatenation, every row seeing all before it), <see cref="RagMode.KvPacket"/> or <see cref="RagMode.KvLink"/>.
    /// </summary>
    public static StudentLayout Of(int[] prefix, IReadOnlyList<int[]> documents, int[] continuationTokens, RagMode mode, int header, int trailer, int links)
    {
        if (mode is not (RagMode.Full or RagMode.KvPacket or RagMode.KvLink)) throw new ArgumentException($"a layout is full, KV Packet or KVLink, not {mode}", nameof(mode));
        var source = new List<int>();
        var first = new List<int>();
        void Add(int value, int seesFrom) { first.Add(seesFrom); source.Add(value); }
        foreach (int token in prefix) Add(token, 0);
        foreach (var document in documents)
        {
            int start = mode == RagMode.Full ? 0 : source.Count;
            if (mode == RagMode.KvPacket)
                for (int r = 0; r < header; r++) Add(-1 - r, start);
            foreach (int token in document) Add(token, start);
            if (mode == RagMode.KvPacket)
                for (int r = 0; r < trailer; r++) Add(-1 - (header + r), start);
            else if (mode == RagMode.KvLink)
                for (int r = 0; r < links; r++) Add(-1 - r, 0);
        }
        int continuation = source.Count;
        foreach (int token in continuationTokens) Add(token, 0);
        return new StudentLayout([.. source], [.. first], continuation);
    }
}
