using KvPacket.Core.Numerics;

namespace KvPacket.Training.Qa;

/// <summary>One retrieved document: a title and its text.</summary>
public sealed record QaDocument(string Title, string Text);

/// <summary>Which entity a document is about.</summary>
public enum EntityKind
{
    /// <summary>A person.</summary>
    Person,
    /// <summary>A city.</summary>
    City,
    /// <summary>An organisation.</summary>
    Organisation,
    /// <summary>A written work.</summary>
    Work,
}

/// <summary>
/// Encyclopedia-style documents about a <see cref="QaWorld"/>'s entities: every fact of the entity, each sentence from
/// one of several paraphrase templates, in a shuffled order — so the same entity reads differently from one request to
/// the next and a reader must understand the sentence, not its position.
/// </summary>
public static class QaDocuments
{
    /// <summary>The title of entity <paramref name="index"/> of <paramref name="kind"/>'s document: its name.</summary>
    public static string Title(QaWorld world, EntityKind kind, int index) => kind switch
    {
        EntityKind.Person => world.People[index].Name,
        EntityKind.City => world.Cities[index].Name,
        EntityKind.Organisation => world.Organisations[index].Name,
        _ => world.Works[index].Title,
    };

    /// <summary>The document about entity <paramref name="index"/> of <paramref name="kind"/>, its wording drawn from <paramref name="random"/>.</summary>
    public static QaDocument Write(QaWorld world, EntityKind kind, int index, ref SeededRandom random)
    {
        var facts = new List<string>();
        switch (kind)
        {
            case EntityKind.Person:
            {
                var p = world.People[index];
                string city = world.Cities[p.BirthplaceCity].Name, employer = world.Organisations[p.Employer].Name;
                facts.Add(Pick(ref random, $"{p.Name} was born in the city of {city}.", $"{p.Name} is a native of {city}.", $"The birthplace of {p.Name} is {city}.", $"{city} is where {p.Name} was born."));
                facts.Add(Pick(ref random, $"{p.Name} was born in the year {p.BirthYear}.", $"The year of birth of {p.Name} is {p.BirthYear}.", $"In {p.BirthYear}, {p.Name} was born."));
                facts.Add(Pick(ref random, $"{p.Name} works for {employer}.", $"{p.Name} is employed by {employer}.", $"{employer} employs {p.Name}.", $"The employer of {p.Name} is {employer}."));
                facts.Add(Pick(ref random, $"{p.Name} is a {p.Profession}.", $"By profession, {p.Name} is a {p.Profession}.", $"{p.Name} works as a {p.Profession}."));
                break;
            }
            case EntityKind.City:
            {
                var c = world.Cities[index];
                string region = world.Regions[c.Region];
                facts.Add(Pick(ref random, $"{c.Name} is a city in the region of {region}.", $"{c.Name} lies in {region}.", $"The region of {c.Name} is {region}."));
                facts.Add(Pick(ref random, $"{c.Name} has a population of {c.Population}.", $"About {c.Population} people live in {c.Name}.", $"The population of {c.Name} is {c.Population}."));
                facts.Add(Pick(ref random, $"{c.Name} was founded in {c.Founded}.", $"The city of {c.Name} dates from {c.Founded}.", $"{c.Name} was established in the year {c.Founded}."));
                break;
            }
            case EntityKind.Organisation:
            {
                var o = world.Organisations[index];
                string city = world.Cities[o.Headquarters].Name, founder = world.People[o.Founder].Name;
                facts.Add(Pick(ref random, $"{o.Name} is headquartered in {city}.", $"The headquarters of {o.Name} are in {city}.", $"{o.Name} is based in {city}."));
                facts.Add(Pick(ref random, $"{o.Name} was founded in {o.Founded}.", $"{o.Name} was established in the year {o.Founded}.", $"The founding year of {o.Name} is {o.Founded}."));
                facts.Add(Pick(ref random, $"{o.Name} was founded by {founder}.", $"{founder} founded {o.Name}.", $"The founder of {o.Name} is {founder}."));
                facts.Add(Pick(ref random, $"{o.Name} works in the {o.Industry} trade.", $"{o.Name} is a {o.Industry} business.", $"The trade of {o.Name} is {o.Industry}."));
                break;
            }
            default:
            {
                var w = world.Works[index];
                string author = world.People[w.Author].Name;
                facts.Add(Pick(ref random, $"{w.Title} was written by {author}.", $"{author} is the author of {w.Title}.", $"{author} wrote {w.Title}."));
                facts.Add(Pick(ref random, $"{w.Title} was published in {w.Year}.", $"{w.Title} first appeared in {w.Year}.", $"The publication year of {w.Title} is {w.Year}."));
                facts.Add(Pick(ref random, $"{w.Title} is a {w.Genre}.", $"The genre of {w.Title} is {w.Genre}.", $"{w.Title} is known as a {w.Genre}."));
                break;
            }
        }
        for (int i = facts.Count - 1; i > 0; i--)
        {
            int j = (int)(random.NextUInt64() % (ulong)(i + 1));
            (facts[i], facts[j]) = (facts[j], facts[i]);
        }
        return new QaDocument(Title(world, kind, index), string.Join(" ", facts));
    }

    internal static string Pick(ref SeededRandom random, params string[] options) => options[(int)(random.NextUInt64() % (ulong)options.Length)];
}
