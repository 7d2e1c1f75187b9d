using KvPacket.Core.Memory;
using System.Runtime.CompilerServices;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Which adjacent token pairs merge, into what, and with what priority (lower rank first). Byte-level BPE fills it
/// from its merge list, tiktoken from its ranks, SentencePiece from its piece scores; <see cref="Apply"/> is the one
/// merge loop they share: a binary heap of candidate pairs over a linked list of symbols, O(n log n) per word.
/// </summary>
internal sealed class MergeTable
{
    private readonly Dictionary<long, (int Rank, int Merged)> _pairs = new();

    public int Count => _pairs.Count;

    public void Add(int left, int right, int rank, int merged) => _pairs.TryAdd(Key(left, right), (rank, merged));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>
    /// Merges <paramref name="symbols"/> in place (ids; negative ids never merge) and returns how many remain.
    /// <paramref name="starts"/>, if not empty, holds each symbol's source offset and is compacted alongside.
    /// </summary>
    public int Apply(Span<int> symbols, Span<int> starts)
    {
        int n = symbols.Length;
        if (n < 2) return n;
        int[] next = ScratchArrays<int>.Rent(n);
        int[] prev = ScratchArrays<int>.Rent(n);
        Candidate[] heap = ScratchArrays<Candidate>.Rent(3 * n);
        try
        {
            int heapCount = 0;
            for (int i = 0; i < n; i++)
            {
                next[i] = i + 1 < n ? i + 1 : -1;
                prev[i] = i - 1;
            }
            for (int i = 0; i + 1 < n; i++) Offer(symbols, i, i + 1, heap, ref heapCount);

            while (heapCount > 0)
            {
                var top = Pop(heap, ref heapCount);
                int right = next[top.Left];
                // Stale candidates (a side was merged away or changed since) are skipped.
                if (symbols[top.Left] != top.LeftId || right < 0 || right != top.Right || symbols[right] != top.RightId) continue;
                symbols[top.Left] = top.Merged;
                symbols[right] = int.MinValue;
                next[top.Left] = next[right];
                if (next[right] >= 0) prev[next[right]] = top.Left;
                if (prev[top.Left] >= 0) Offer(symbols, prev[top.Left], top.Left, heap, ref heapCount);
                if (next[top.Left] >= 0) Offer(symbols, top.Left, next[top.Left], heap, ref heapCount);
            }

            int count = 0;
            for (int i = 0; i >= 0; i = next[i])
            {
                symbols[count] = symbols[i];
                if (!starts.IsEmpty) starts[count] = starts[i];
                count++;
            }
            return count;
        }
        finally
        {
            ScratchArrays<int>.Return(next);
            ScratchArrays<int>.Return(prev);
            ScratchArrays<Candidate>.Return(heap);
        }
    }

    private void Offer(Span<int> symbols, int left, int right, Candidate[] heap, ref int count)
    {
        int a = symbols[left], b = symbols[right];
        if (a < 0 || b < 0 || !_pairs.TryGetValue(Key(a, b), out var merge)) return;
        if (count == heap.Length) return; // cannot happen: n − 1 initial candidates plus at most 2 per merge
        heap[count] = new Candidate(merge.Rank, left, right, a, b, merge.Merged);
        int i = count++;
        while (i > 0)
        {
            int parent = (i - 1) / 2;
            if (!heap[i].Before(heap[parent])) break;
            (heap[i], heap[parent]) = (heap[parent], heap[i]);
            i = parent;
        }
    }

    private static Candidate Pop(Candidate[] heap, ref int count)
    {
        var top = heap[0];
        heap[0] = heap[--count];
        int i = 0;
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, best = i;
            if (l < count && heap[l].Before(heap[best])) best = l;
            if (r < count && heap[r].Before(heap[best])) best = r;
            if (best == i) return top;
            (heap[i], heap[best]) = (heap[best], heap[i]);
            i = best;
        }
    }

    /// <summary>A possible merge of the symbols at Left and Right; lower rank first, then leftmost.</summary>
    private readonly record struct Candidate(int Rank, int Left, int Right, int LeftId, int RightId, int Merged)
    {
        public bool Before(in Candidate other) => Rank < other.Rank || (Rank == other.Rank && Left < other.Left);
    }
}
