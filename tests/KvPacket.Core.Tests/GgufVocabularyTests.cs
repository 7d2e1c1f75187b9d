using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Tokenization;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Core.Tests;

/// <summary>Byte-level BPE vocabularies written into GGUF (<c>tokenizer.ggml.model</c> = gpt2) and read back.</summary>
public class GgufVocabularyTests
{
    [Theory]
    [InlineData("bpe-gpt2", "gpt-2")]
    [InlineData("bpe-llama3", "llama-bpe")]
    public void A_byte_level_BPE_written_into_GGUF_reads_back_and_encodes_the_goldens_alike(string fixture, string preName)
    {
        using var temp = Fixtures.TempDirectory();
        var original = ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf($"{fixture}/tokenizer.json"));
        string gguf = VocabularyFiles.WriteGguf(temp.Path, GgufVocabulary.From(original));

        var metadata = GgufReader.ReadMetadata(gguf);
        Assert.Equal("gpt2", metadata["tokenizer.ggml.model"]);
        Assert.Equal(preName, metadata["tokenizer.ggml.pre"]);
        var read = Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.TryLoadNextTo(gguf));
        Assert.Equal((original.VocabSize, original.BosId, original.EosId), (read.VocabSize, read.BosId, read.EosId));
        Assert.Equal(original.SpecialTokens, read.SpecialTokens);
        using var golden = Fixtures.Golden(fixture);
        int cases = 0;
        foreach (var item in golden.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = item.GetProperty("text").GetString()!;
            int[] ids = item.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(ids, read.Encode(text));
            Assert.Equal(item.GetProperty("decoded").GetString(), read.Decode(ids));
            cases++;
        }
        Assert.True(cases >= 20, $"only {cases} golden cases");
    }

    [Fact]
    public void A_gpt2_vocabulary_with_a_pre_tokenizer_we_do_not_know_is_refused_by_name()
    {
        using var temp = Fixtures.TempDirectory();
        var original = ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-gpt2/tokenizer.json"));
        var metadata = GgufVocabulary.From(original).Metadata()
            .Where(m => m.Key != GgufVocabulary.PatternKey)
            .Select(m => m.Key == "tokenizer.ggml.pre" ? new KeyValuePair<string, object>(m.Key, "deepseek-coder") : m).ToList();
        string gguf = Path.Combine(temp.Path, "odd.gguf");
        GgufWriter.Write(gguf, [new("general.architecture", "llama"), .. metadata], []);

        var error = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.TryLoadNextTo(gguf));
        Assert.Contains("deepseek-coder", error.Message);
    }
}
