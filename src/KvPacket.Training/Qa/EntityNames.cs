using KvPacket.Core.Numerics;

namespace KvPacket.Training.Qa;

/// <summary>
/// Invented names built from syllables, so no fact about them can have been memorised from elsewhere. An instance never
/// hands out a name twice, nor one of <paramref name="reserved"/> (the held-out worlds' names, for training worlds).
/// </summary>
public sealed class EntityNames(ulong seed, IReadOnlySet<string>? reserved = null)
{
    private static readonly string[] Onsets = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st", "sh", "th", "ch"];
    private static readonly string[] Vowels = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ia", "eo"];
    private static readonly string[] Codas = ["", "", "", "n", "r", "l", "s", "m", "th", "x"];
    private readonly HashSet<string> _used = [];
    private SeededRandom _random = new(seed);

    /// <summary>A name of <paramref name="minSyllables"/> to <paramref name="maxSyllables"/> syllables, capitalised, never handed out before.</summary>
    public string Next(int minSyllables = 2, int maxSyllables = 3)
    {
        while (true)
        {
            int count = minSyllables + (int)(_random.NextUInt64() % (ulong)(maxSyllables - minSyllables + 1));
            var name = new System.Text.StringBuilder();
            for (int i = 0; i < count; i++)
                name.Append(Pick(Onsets)).Append(Pick(Vowels)).Append(i == count - 1 ? Pick(Codas) : "");
            name[0] = char.ToUpperInvariant(name[0]);
            string result = name.ToString();
            if (reserved?.Contains(result) != true && _used.Add(result)) return result;
        }
    }

    /// <summary>Every name handed out.</summary>
    public IReadOnlySet<string> Used => _used;

    private string Pick(string[] options) => options[(int)(_random.NextUInt64() % (ulong)options.Length)];
}
