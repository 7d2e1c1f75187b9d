using System.Text.Json;
using KvPacket.Core.Tokenization;
using Xunit;

namespace KvPacket.Tests;

/// <summary>The byte-level BPE trainer: a file our loader reads, exact round trips, the same file for the same corpus.</summary>
public class ByteLevelBpeTrainerTests
{
    private static IEnumerable<string> Corpus()
    {
        string[] names = ["Zenai Koviabru", "Lidri", "Kialeori Society", "Chusto Sobrahil", "Dresam"];
        for (int i = 0; i < 300; i++)
            yield return $"{names[i % 5]} was born in {1800 + i % 97}. {names[(i + 2) % 5]} works for {names[(i + 3) % 5]}.\nQuestion: Where was {names[i % 5]} born?\n";
    }

    [Fact]
    public void A_trained_tokenizer_loads_and_round_trips_seen_and_unseen_text()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "tokenizer.json");
        int merges = ByteLevelBpeTrainer.Train(Corpus(), 400, ["<|begin_of_text|>", "<|end_of_text|>"], path);
        var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(path);

        Assert.Equal(2 + 256 + merges, tokenizer.VocabSize);
        Assert.True(tokenizer.VocabSize <= 400);
        Assert.Equal(0, tokenizer.BosId);
        Assert.Equal(1, tokenizer.EosId);
        foreach (string text in Corpus().Take(20).Concat(["Unseen Quibbleworth was born in 2024.", "naïve café 漢字 👩‍💻", "", "  \n\t"]))
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
        Assert.Single(tokenizer.Encode(" Koviabru"));   // a frequent word became one token
        Assert.True(tokenizer.Encode("Zenai Koviabru was born in 1850.").Length < "Zenai Koviabru was born in 1850.".Length / 2);
    }

    [Fact]
    public void The_same_corpus_gives_the_same_file_with_unique_vocabulary_entries()
    {
        using var temp = Fixtures.TempDirectory();
        string a = Path.Combine(temp.Path, "a.json"), b = Path.Combine(temp.Path, "b.json");
        ByteLevelBpeTrainer.Train(Corpus(), 500, ["<|begin_of_text|>"], a);
        ByteLevelBpeTrainer.Train(Corpus(), 500, ["<|begin_of_text|>"], b);

        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        using var json = JsonDocument.Parse(File.ReadAllBytes(a));
        var vocab = json.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject().ToList();
        Assert.Equal(vocab.Count, vocab.Select(v => v.Name).Distinct().Count());
        Assert.Equal(vocab.Count, vocab.Select(v => v.Value.GetInt32()).Distinct().Count());
    }

    [Fact]
    public void With_digits_split_numbers_are_spelled_digit_by_digit_and_the_file_says_so()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "tokenizer.json");
        ByteLevelBpeTrainer.Train(Corpus(), 400, ["<|begin_of_text|>"], path, pattern: PreTokenizer.Gpt2DigitsPattern);
        var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(path);

        using var json = JsonDocument.Parse(File.ReadAllBytes(path));
        var vocab = json.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject().Select(v => v.Name).ToList();
        Assert.DoesNotContain(vocab, piece => piece.Count(char.IsAsciiDigit) > 1);
        var steps = json.RootElement.GetProperty("pre_tokenizer").GetProperty("pretokenizers").EnumerateArray().ToList();
        Assert.Equal(["Split", "ByteLevel"], steps.Select(e => e.GetProperty("type").GetString()));
        Assert.False(steps[1].GetProperty("use_regex").GetBoolean());

        Assert.Equal([" 1", "8", "5", "0"], tokenizer.Encode(" 1850").Select(id => tokenizer.Decode([id])));
        foreach (string text in Corpus().Take(20).Concat(["Unseen Quibbleworth was born in 2024.", "naïve café 漢字 👩‍💻 ١٢٣", ""]))
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));

        // Without the split the same corpus learns years as tokens: the test above would catch a trainer that ignored it.
        string plain = Path.Combine(temp.Path, "plain.json");
        ByteLevelBpeTrainer.Train(Corpus(), 400, ["<|begin_of_text|>"], plain);
        Assert.True(ByteLevelBpeTokenizer.LoadHuggingFace(plain).Encode(" 1850").Length < 4);
    }
}
