using System.Collections.Concurrent;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Encoded ids of words already seen, looked up by span so a hit allocates nothing. Bounded: when full it starts over,
/// which keeps memory flat on endless streams of new words. Safe for concurrent encoders.
/// </summary>
internal sealed class WordCache
{
    private const int Limit = 200_000;

    /// <summary>Words longer than this are encoded every time: real words are short, and a megabyte "word" must not stay cached.</summary>
    private const int LongestCached = 256;
    private readonly ConcurrentDictionary<string, int[]> _words = new();
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private int _count;

    public WordCache() => _lookup = _words.GetAlternateLookup<ReadOnlySpan<char>>();

    public bool TryGet(ReadOnlySpan<char> word, out int[] ids) => _lookup.TryGetValue(word, out ids!);

    public void Add(ReadOnlySpan<char> word, ReadOnlySpan<int> ids)
    {
        if (word.Length > LongestCached) return;
        if (_count >= Limit)
        {
            _words.Clear();
            _count = 0;
        }
        if (_words.TryAdd(word.ToString(), ids.ToArray())) Interlocked.Increment(ref _count);
    }
}
