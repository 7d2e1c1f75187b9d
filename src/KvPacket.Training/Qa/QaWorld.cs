using KvPacket.Core.Numerics;

namespace KvPacket.Training.Qa;

/// <summary>A person: where and when born, whom they work for and as what.</summary>
public sealed record Person(string Name, int BirthplaceCity, int BirthYear, int Employer, string Profession);

/// <summary>A city: its region, population and founding year.</summary>
public sealed record City(string Name, int Region, int Population, int Founded);

/// <summary>An organisation: its headquarters city, founding year, founder (a person) and industry.</summary>
public sealed record Organisation(string Name, int Headquarters, int Founded, int Founder, string Industry);

/// <summary>A written work: its author (a person), year and genre.</summary>
public sealed record Work(string Title, int Author, int Year, string Genre);

/// <summary>
/// One split's invented world: people, cities (in regions), organisations and works, with typed relations between
/// them, all drawn from a seed. Every name is new (<see cref="EntityNames"/>), and years within a kind are distinct
/// so "which came first" always has one answer.
/// </summary>
public sealed class QaWorld
{
    private static readonly string[] Professions = ["painter", "engineer", "physician", "teacher", "sailor", "architect", "chemist", "lawyer", "farmer", "composer", "baker", "astronomer"];
    private static readonly string[] Industries = ["shipping", "textile", "mining", "publishing", "banking", "brewing", "glassmaking", "railway", "insurance", "pottery"];
    private static readonly string[] Genres = ["novel", "poem", "play", "travel memoir", "history", "short story collection", "essay"];
    private static readonly string[] OrganisationKinds = ["Company", "Guild", "Institute", "Works", "Society", "Trading House"];
    private static readonly string[] WorkNouns = ["River", "Lantern", "Harvest", "Tower", "Voyage", "Orchard", "Winter", "Mirror", "Bridge", "Garden"];

    /// <summary>Region names.</summary>
    public required string[] Regions { get; init; }
    /// <summary>Cities.</summary>
    public required City[] Cities { get; init; }
    /// <summary>Organisations.</summary>
    public required Organisation[] Organisations { get; init; }
    /// <summary>People.</summary>
    public required Person[] People { get; init; }
    /// <summary>Works.</summary>
    public required Work[] Works { get; init; }

    /// <summary>A world of the given sizes; names come from <paramref name="names"/>.</summary>
    public static QaWorld Create(EntityNames names, ulong seed, int people = 400, int cities = 80, int regions = 16, int organisations = 100, int works = 160)
    {
        var random = new SeededRandom(seed);
        int Below(int n) => (int)(random.NextUInt64() % (ulong)n);
        int[] DistinctYears(int count, int from, int to)
        {
            var years = Enumerable.Range(from, to - from).ToArray();
            for (int i = years.Length - 1; i > 0; i--) { int j = Below(i + 1); (years[i], years[j]) = (years[j], years[i]); }
            return years[..count];
        }
        string[] regionNames = [.. Enumerable.Range(0, regions).Select(_ => names.Next(2, 3))];
        int[] cityYears = DistinctYears(cities, 900, 1800);
        var cityList = Enumerable.Range(0, cities).Select(i => new City(names.Next(2, 3), Below(regions), 1000 * (5 + Below(2000)), cityYears[i])).ToArray();
        int[] orgYears = DistinctYears(organisations, 1700, 2000);
        int[] birthYears = DistinctYears(people, 2000 - Math.Max(people, 250), 2000);
        var personNames = Enumerable.Range(0, people).Select(_ => $"{names.Next(2, 2)} {names.Next(2, 3)}").ToArray();
        var orgList = Enumerable.Range(0, organisations).Select(i => new Organisation(
            $"{names.Next(2, 3)} {OrganisationKinds[Below(OrganisationKinds.Length)]}", Below(cities), orgYears[i], Below(people), Industries[Below(Industries.Length)])).ToArray();
        var personList = Enumerable.Range(0, people).Select(i => new Person(personNames[i], Below(cities), birthYears[i], Below(organisations),
            Professions[Below(Professions.Length)])).ToArray();
        int[] workYears = DistinctYears(works, 2020 - Math.Max(works, 270), 2020);
        var workList = Enumerable.Range(0, works).Select(i => new Work($"The {WorkNouns[Below(WorkNouns.Length)]} of {names.Next(2, 3)}", Below(people), workYears[i],
            Genres[Below(Genres.Length)])).ToArray();
        return new QaWorld { Regions = regionNames, Cities = cityList, Organisations = orgList, People = personList, Works = workList };
    }
}
