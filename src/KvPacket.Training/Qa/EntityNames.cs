using KvPacket.Core.Numerics;

namespace KvPacket.Training.Qa;

/// <summary>
/// Invented names built from syllables, so no fact about them can have been memorised from elsewhere. One instance
/// hands out names for every split in a fixed order and never repeats one, so the splits' entities are disjoint.
/// </summary>
public sealed class EntityNames(ulong seed)
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
            if (_used.Add(result)) return result;
        }
    }

    /// <summary>Whether <paramref name="name"/> was handed out.</summary>
    public bool Used(string name) => _used.Contains(name);

    private string Pick(string[] options) => options[(int)(_random.NextUInt64() % (ulong)options.Length)];
}
