using System.Text.Json;
using System.Text.Json.Serialization;
using KvPacket.Core.Numerics;

namespace KvPacket.Training.Qa;

/// <summary>One question over retrieved documents, the shape of the papers' datasets.</summary>
/// <param name="Id">Split and index.</param>
/// <param name="Type">single-hop (NQ-like), bridge or comparison (2WikiMultiHopQA / HotpotQA-like), three-hop (MuSiQue-like).</param>
/// <param name="Relation">The relation chain asked about, e.g. person.employer.headquarters.</param>
/// <param name="Question">The question.</param>
/// <param name="Answers">Accepted short answers (the first is the gold one).</param>
/// <param name="Documents">Gold documents and distractors, shuffled.</param>
/// <param name="Gold">Indices into <paramref name="Documents"/> of the documents the answer needs.</param>
/// <param name="FollowUps">Training lines only: further questions answerable from the same documents, asked after the first.</param>
/// <param name="Reasoning">Where the split was written with reasoning, what the answer follows from, stated before it in the
/// training target (<see cref="QaPrompt.AnswerText"/>): a comparison's two values, the entities a bridge or three-hop
/// question passes through; null for single-hop questions and otherwise.</param>
public sealed record QaExample(string Id, string Type, string Relation, string Question, string[] Answers, QaDocument[] Documents, int[] Gold, QaFollowUp[]? FollowUps = null, string? Reasoning = null);

/// <summary>A further question over an example's documents (see <see cref="QaExample"/> for the fields).</summary>
public sealed record QaFollowUp(string Type, string Relation, string Question, string[] Answers, int[] Gold, string? Reasoning = null);

/// <summary>
/// A seeded multi-document QA benchmark over invented worlds: each example holds k documents (the gold ones and
/// distractors about entities of the same kinds, shuffled) and a question with a short answer. Validation and test each
/// ask about one fixed world; every training example gets a small world of its own whose names avoid the held-out
/// worlds' — so no answer can be learned by heart: a model can only score by reading the documents.
/// </summary>
public static class QaBenchmark
{
    /// <summary>Question types, in the order they are written.</summary>
    public static readonly string[] Types = ["single-hop", "bridge", "comparison", "three-hop"];

    /// <summary>The held-out worlds of <paramref name="seed"/> (disjoint names) and every name they use.</summary>
    public static (QaWorld Validation, QaWorld Test, IReadOnlySet<string> Reserved) HeldOutWorlds(ulong seed)
    {
        var names = new EntityNames(seed);
        var validation = QaWorld.Create(names, seed * 3 + 2);
        var test = QaWorld.Create(names, seed * 3 + 3);
        return (validation, test, names.Used);
    }

    /// <summary>Training example <paramref name="index"/>'s own world: a few entities of each kind, names outside <paramref name="reserved"/>.</summary>
    public static QaWorld TrainingWorld(ulong seed, long index, IReadOnlySet<string> reserved)
    {
        ulong worldSeed = seed * 0xD1B54A32D192ED03UL ^ (ulong)index * 0x9E3779B97F4A7C15UL;
        return QaWorld.Create(new EntityNames(worldSeed, reserved), worldSeed, people: 16, cities: 8, regions: 4, organisations: 8, works: 10);
    }

    /// <summary>
    /// <paramref name="count"/> examples of <paramref name="world"/>, the types in turn, each with
    /// <paramref name="minDocuments"/>..<paramref name="maxDocuments"/> documents (never fewer than its gold ones).
    /// </summary>
    public static IEnumerable<QaExample> Generate(QaWorld world, string split, ulong seed, int count, int minDocuments = 4, int maxDocuments = 10, bool reasoning = false) =>
        Generate(_ => world, split, seed, count, minDocuments, maxDocuments, reasoning: reasoning);

    /// <summary>
    /// Training examples, each over its own <see cref="TrainingWorld"/>, each asking up to <paramref name="questions"/>
    /// questions of its documents (the first picks the gold documents; follow-ups of the other types are asked only where
    /// the documents answer them) — more answers per line of text, so more of the training signal is reading.
    /// <paramref name="reasoning"/>: multi-hop questions carry what they follow from (<see cref="QaExample.Reasoning"/>); every
    /// other field is the same either way.
    /// </summary>
    public static IEnumerable<QaExample> GenerateTraining(ulong seed, IReadOnlySet<string> reserved, int count, int minDocuments = 1, int maxDocuments = 10, int questions = 1, bool reasoning = false) =>
        Generate(i => TrainingWorld(seed, i, reserved), "train", seed, count, minDocuments, maxDocuments, questions, reasoning);

    private static IEnumerable<QaExample> Generate(Func<int, QaWorld> worldOf, string split, ulong seed, int count, int minDocuments, int maxDocuments, int questions = 1, bool reasoning = false)
    {
        if (questions < 1) throw new ArgumentException($"questions per example: need at least 1, got {questions}");
        if (minDocuments < 1 || maxDocuments < minDocuments) throw new ArgumentException($"documents per example: need 1 ≤ min ≤ max, got {minDocuments}..{maxDocuments} (an example holds at least its gold documents)");
        // An example depends only on (seed, index): made in parallel, handed out in order.
        return Enumerable.Range(0, count).AsParallel().AsOrdered().Select(i => Example(worldOf(i), split, seed, i, minDocuments, maxDocuments, questions, reasoning));
    }

    private static QaExample Example(QaWorld world, string split, ulong seed, int i, int minDocuments, int maxDocuments, int questions, bool reasoning)
    {
        var random = new SeededRandom(seed * 0x9E3779B97F4A7C15UL ^ (ulong)i * 0xBF58476D1CE4E5B9UL);
        string type = Types[i % Types.Length];
        var draws = new Draws(random);
        var (relation, question, answer, gold, because) = Ask(world, type, draws);
        random = draws.Random;
        int k = Math.Max(gold.Count, minDocuments + (int)(random.NextUInt64() % (ulong)(maxDocuments - minDocuments + 1)));
        var chosen = new List<(EntityKind Kind, int Index)>(gold);
        for (int attempt = 0; chosen.Count < k; attempt++)
        {
            // Distractors are entities of the gold documents' kinds; a small world may run out of those.
            var kind = attempt < 64 ? gold[(int)(random.NextUInt64() % (ulong)gold.Count)].Kind : (EntityKind)(random.NextUInt64() % 4);
            var candidate = (kind, (int)(random.NextUInt64() % (ulong)Size(world, kind)));
            if (!chosen.Contains(candidate)) chosen.Add(candidate);
        }
        int[] order = [.. Enumerable.Range(0, chosen.Count)];
        for (int j = order.Length - 1; j > 0; j--) { int r = (int)(random.NextUInt64() % (ulong)(j + 1)); (order[j], order[r]) = (order[r], order[j]); }
        var documents = order.Select(o => QaDocuments.Write(world, chosen[o].Kind, chosen[o].Index, ref random)).ToArray();
        int[] Placed(List<(EntityKind Kind, int Index)> entities) => [.. Enumerable.Range(0, order.Length).Where(p => entities.Contains(chosen[order[p]])).Order()];
        var followUps = new List<QaFollowUp>();
        draws.Random = random;
        for (int q = 1, attempts = 0; q < questions && attempts < 64 * questions; attempts++)
        {
            // Drawn until one is answerable from the documents already chosen and not asked yet.
            string followType = Types[(i + 1 + attempts) % Types.Length];
            if (TryAsk(world, followType, draws) is not { } next || next.Gold.Any(g => !chosen.Contains(g)) ||
                next.Question == question || followUps.Any(f => f.Question == next.Question)) continue;
            followUps.Add(new QaFollowUp(followType, next.Relation, next.Question, [next.Answer], Placed(next.Gold), reasoning ? next.Reasoning : null));
            q++;
        }
        return new QaExample($"{split}-{i}", type, relation, question, [answer], documents, Placed(gold), followUps.Count > 0 ? [.. followUps] : null, reasoning ? because : null);
    }

    private static int Size(QaWorld world, EntityKind kind) => kind switch
    {
        EntityKind.Person => world.People.Length,
        EntityKind.City => world.Cities.Length,
        EntityKind.Organisation => world.Organisations.Length,
        _ => world.Works.Length,
    };

    /// <summary>A seeded stream of draws shared by the question builders.</summary>
    private sealed class Draws(SeededRandom random)
    {
        public SeededRandom Random = random;
        public int Any(int n) => (int)(Random.NextUInt64() % (ulong)n);
        public string Pick(params string[] options) => options[Any(options.Length)];
    }

    /// <summary>A question of <paramref name="type"/>: draws until one is not degenerate (the same entity twice, or a chain that loops).</summary>
    private static (string Relation, string Question, string Answer, List<(EntityKind Kind, int Index)> Gold, string? Reasoning) Ask(QaWorld w, string type, Draws d)
    {
        while (true)
            if (TryAsk(w, type, d) is { } asked) return asked;
    }

    /// <summary>
    /// A question of <paramref name="type"/>, or null when the draw is degenerate. Multi-hop questions also say what they
    /// follow from — a comparison each candidate with its value, in the question's order; a bridge or three-hop question
    /// the entities its chain passes through, in order — which draws nothing, so it never changes the data.
    /// </summary>
    /// <remarks>
    /// Values are written as the documents write them. A model whose tokenizer makes each year one token, fine-tuned to
    /// state the two years, picked between them by chance (it never learned to order 320 year tokens), and could not
    /// learn to spell a year token digit by digit either: reasoning is meant for a model with a digit-splitting tokenizer.
    /// Such a model, pre-trained with reasoned comparisons alone, answered bridge and three-hop questions no better with
    /// full attention than from separate documents (0.45 / 0.52 F1): it never learned to make two hops in one step.
    /// Naming the entity between hops makes each hop a lookup of its own.
    /// </remarks>
    private static (string Relation, string Question, string Answer, List<(EntityKind Kind, int Index)> Gold, string? Reasoning)? TryAsk(QaWorld w, string type, Draws d)
    {
        // A chain's gold entities are listed in the order its hops reach them: those after the question's own are its steps.
        if (Draw(w, type, d) is not { } asked) return null;
        return type is "bridge" or "three-hop"
            ? asked with { Reasoning = string.Join("; ", asked.Gold.Skip(1).Select(g => QaDocuments.Title(w, g.Kind, g.Index))) }
            : asked;
    }

    /// <summary><see cref="TryAsk"/> before a chain's steps are named: a comparison's stated values only.</summary>
    private static (string Relation, string Question, string Answer, List<(EntityKind Kind, int Index)> Gold, string? Reasoning)? Draw(QaWorld w, string type, Draws d)
    {
        int Any(int n) => d.Any(n);
        string P(params string[] options) => d.Pick(options);
        {
            switch (type)
            {
                case "single-hop":
                {
                    int p = Any(w.People.Length), o = Any(w.Organisations.Length), c = Any(w.Cities.Length), k = Any(w.Works.Length);
                    var person = w.People[p];
                    var org = w.Organisations[o];
                    var city = w.Cities[c];
                    var work = w.Works[k];
                    return Any(11) switch
                    {
                        0 => ("person.birthplace", P($"Where was {person.Name} born?", $"In which city was {person.Name} born?", $"What is the birthplace of {person.Name}?"), w.Cities[person.BirthplaceCity].Name, [(EntityKind.Person, p)], null),
                        1 => ("person.birth_year", P($"In which year was {person.Name} born?", $"When was {person.Name} born?"), $"{person.BirthYear}", [(EntityKind.Person, p)], null),
                        2 => ("person.employer", P($"Which organisation does {person.Name} work for?", $"Who employs {person.Name}?"), w.Organisations[person.Employer].Name, [(EntityKind.Person, p)], null),
                        3 => ("person.profession", P($"What is the profession of {person.Name}?", $"What does {person.Name} work as?"), person.Profession, [(EntityKind.Person, p)], null),
                        4 => ("organisation.headquarters", P($"Where is {org.Name} headquartered?", $"In which city is {org.Name} based?"), w.Cities[org.Headquarters].Name, [(EntityKind.Organisation, o)], null),
                        5 => ("organisation.founded", P($"When was {org.Name} founded?", $"In which year was {org.Name} established?"), $"{org.Founded}", [(EntityKind.Organisation, o)], null),
                        6 => ("organisation.founder", P($"Who founded {org.Name}?", $"Who is the founder of {org.Name}?"), w.People[org.Founder].Name, [(EntityKind.Organisation, o)], null),
                        7 => ("city.region", P($"In which region is {city.Name}?", $"Which region does {city.Name} lie in?"), w.Regions[city.Region], [(EntityKind.City, c)], null),
                        8 => ("city.population", P($"What is the population of {city.Name}?", $"How many people live in {city.Name}?"), $"{city.Population}", [(EntityKind.City, c)], null),
                        9 => ("work.author", P($"Who wrote {work.Title}?", $"Who is the author of {work.Title}?"), w.People[work.Author].Name, [(EntityKind.Work, k)], null),
                        _ => ("work.year", P($"When was {work.Title} published?", $"In which year did {work.Title} first appear?"), $"{work.Year}", [(EntityKind.Work, k)], null),
                    };
                }
                case "bridge":
                {
                    int p = Any(w.People.Length), o = Any(w.Organisations.Length), k = Any(w.Works.Length);
                    var person = w.People[p];
                    var org = w.Organisations[o];
                    var work = w.Works[k];
                    var employer = w.Organisations[person.Employer];
                    return Any(6) switch
                    {
                        0 => ("person.employer.headquarters", P($"In which city is the employer of {person.Name} headquartered?", $"Where is the organisation that employs {person.Name} based?"),
                            w.Cities[employer.Headquarters].Name, [(EntityKind.Person, p), (EntityKind.Organisation, person.Employer)], null),
                        1 => ("person.employer.founded", P($"In which year was the organisation that {person.Name} works for founded?", $"When was the employer of {person.Name} established?"),
                            $"{employer.Founded}", [(EntityKind.Person, p), (EntityKind.Organisation, person.Employer)], null),
                        2 when employer.Founder != p => ("person.employer.founder", P($"Who founded the organisation that {person.Name} works for?", $"Who is the founder of the employer of {person.Name}?"),
                            w.People[employer.Founder].Name, [(EntityKind.Person, p), (EntityKind.Organisation, person.Employer)], null),
                        2 => null,
                        3 => ("person.birthplace.region", P($"In which region was {person.Name} born?", $"Which region is the birthplace of {person.Name} in?"),
                            w.Regions[w.Cities[person.BirthplaceCity].Region], [(EntityKind.Person, p), (EntityKind.City, person.BirthplaceCity)], null),
                        4 => ("work.author.birthplace", P($"Where was the author of {work.Title} born?", $"In which city was the writer of {work.Title} born?"),
                            w.Cities[w.People[work.Author].BirthplaceCity].Name, [(EntityKind.Work, k), (EntityKind.Person, work.Author)], null),
                        _ => ("organisation.founder.birth_year", P($"In which year was the founder of {org.Name} born?", $"When was the founder of {org.Name} born?"),
                            $"{w.People[org.Founder].BirthYear}", [(EntityKind.Organisation, o), (EntityKind.Person, org.Founder)], null),
                    };
                }
                case "comparison":
                {
                    int a = Any(4);
                    switch (a)
                    {
                        case 0:
                        {
                            int p1 = Any(w.People.Length), p2 = Any(w.People.Length);
                            if (p1 == p2) return null;
                            var (x, y) = (w.People[p1], w.People[p2]);
                            return ("person.birth_year.earlier", P($"Who was born earlier, {x.Name} or {y.Name}?", $"Which of {x.Name} and {y.Name} was born first?"),
                                x.BirthYear < y.BirthYear ? x.Name : y.Name, [(EntityKind.Person, p1), (EntityKind.Person, p2)], $"{x.Name}: {x.BirthYear}; {y.Name}: {y.BirthYear}");
                        }
                        case 1:
                        {
                            int o1 = Any(w.Organisations.Length), o2 = Any(w.Organisations.Length);
                            if (o1 == o2) return null;
                            var (x, y) = (w.Organisations[o1], w.Organisations[o2]);
                            return ("organisation.founded.earlier", P($"Which was founded first, {x.Name} or {y.Name}?", $"Which is older, {x.Name} or {y.Name}?"),
                                x.Founded < y.Founded ? x.Name : y.Name, [(EntityKind.Organisation, o1), (EntityKind.Organisation, o2)], $"{x.Name}: {x.Founded}; {y.Name}: {y.Founded}");
                        }
                        case 2:
                        {
                            int c1 = Any(w.Cities.Length), c2 = Any(w.Cities.Length);
                            if (c1 == c2 || w.Cities[c1].Population == w.Cities[c2].Population) return null;
                            var (x, y) = (w.Cities[c1], w.Cities[c2]);
                            return ("city.population.larger", P($"Which city has more inhabitants, {x.Name} or {y.Name}?", $"Which is larger by population, {x.Name} or {y.Name}?"),
                                x.Population > y.Population ? x.Name : y.Name, [(EntityKind.City, c1), (EntityKind.City, c2)], $"{x.Name}: {x.Population}; {y.Name}: {y.Population}");
                        }
                        default:
                        {
                            int k1 = Any(w.Works.Length), k2 = Any(w.Works.Length);
                            if (k1 == k2) return null;
                            var (x, y) = (w.Works[k1], w.Works[k2]);
                            return ("work.year.earlier", P($"Which was published earlier, {x.Title} or {y.Title}?", $"Which appeared first, {x.Title} or {y.Title}?"),
                                x.Year < y.Year ? x.Title : y.Title, [(EntityKind.Work, k1), (EntityKind.Work, k2)], $"{x.Title}: {x.Year}; {y.Title}: {y.Year}");
                        }
                    }
                }
                default:
                {
                    int p = Any(w.People.Length), k = Any(w.Works.Length);
                    var person = w.People[p];
                    var employer = w.Organisations[person.Employer];
                    var work = w.Works[k];
                    var author = w.People[work.Author];
                    switch (Any(3))
                    {
                        case 0:
                            if (employer.Founder == p) return null;
                            return ("person.employer.founder.birthplace", P($"Where was the founder of the organisation that employs {person.Name} born?", $"In which city was the founder of {person.Name}'s employer born?"),
                                w.Cities[w.People[employer.Founder].BirthplaceCity].Name, [(EntityKind.Person, p), (EntityKind.Organisation, person.Employer), (EntityKind.Person, employer.Founder)], null);
                        case 1:
                            return ("person.employer.headquarters.region", P($"In which region is the headquarters of {person.Name}'s employer?", $"Which region is the organisation that employs {person.Name} based in?"),
                                w.Regions[w.Cities[employer.Headquarters].Region], [(EntityKind.Person, p), (EntityKind.Organisation, person.Employer), (EntityKind.City, employer.Headquarters)], null);
                        default:
                            return ("work.author.employer.headquarters", P($"In which city is the employer of the author of {work.Title} based?", $"Where is the organisation that employs the writer of {work.Title} headquartered?"),
                                w.Cities[w.Organisations[author.Employer].Headquarters].Name, [(EntityKind.Work, k), (EntityKind.Person, work.Author), (EntityKind.Organisation, author.Employer)], null);
                    }
                }
            }
        }
    }

    /// <summary>
    /// Writes train.jsonl, validation.jsonl and test.jsonl (one <see cref="QaExample"/> per line) into
    /// <paramref name="directory"/>: held-out splits with <paramref name="minDocuments"/>..<paramref name="maxDocuments"/>
    /// documents, training examples with <paramref name="minTrainDocuments"/>.. of them (fewer documents early in a
    /// line's range help a model start learning to read; DESIGN.md §8) and up to <paramref name="trainQuestions"/> questions each;
    /// with <paramref name="reasoning"/>, comparisons carry the facts they follow from.
    /// </summary>
    public static void WriteSplits(string directory, ulong seed, int train, int validation, int test, int minDocuments = 4, int maxDocuments = 10, int minTrainDocuments = 1, int trainQuestions = 1, bool reasoning = false)
    {
        Directory.CreateDirectory(directory);
        var (validationWorld, testWorld, reserved) = HeldOutWorlds(seed);
        var options = new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        void Write(string name, IEnumerable<QaExample> examples)
        {
            using var writer = new StreamWriter(Path.Combine(directory, $"{name}.jsonl"));
            foreach (var example in examples) writer.WriteLine(JsonSerializer.Serialize(example, options));
        }
        Write("train", GenerateTraining(seed, reserved, train, minTrainDocuments, maxDocuments, trainQuestions, reasoning));
        Write("validation", Generate(validationWorld, "validation", seed + 1, validation, minDocuments, maxDocuments, reasoning));
        Write("test", Generate(testWorld, "test", seed + 2, test, minDocuments, maxDocuments, reasoning));
    }

    /// <summary>Reads a split written by <see cref="WriteSplits"/>.</summary>
    public static IEnumerable<QaExample> Read(string path)
    {
        var options = new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
        int line = 0;
        foreach (string text in File.ReadLines(path))
        {
            line++;
            if (text.Length == 0) continue;
            yield return JsonSerializer.Deserialize<QaExample>(text, options) ?? throw new InvalidDataException($"{path}:{line}: not an example");
        }
    }
}
