using System.Text.Json;
using KvPacket.Core.Tokenization;
using Xunit;

namespace KvPacket.Tests;

public class SentencePieceTokenizerTests
{
    private static readonly Lazy<SentencePieceTokenizer> Llama2 = new(() => SentencePieceTokenizerFixture.Llama2);

    public static TheoryData<int> Cases => new(Enumerable.Range(0, 30));

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_golden_string_encodes_to_the_reference_ids_and_decodes_back(int index)
    {
        using var golden = Fixtures.Golden("llama2-tokenizer");
        var entry = golden.RootElement.GetProperty("cases")[index];
        string text = entry.GetProperty("text").GetString()!;
        int[] expected = entry.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        string[] pieces = entry.GetProperty("pieces").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var tokenizer = Llama2.Value;

        int[] ids = tokenizer.Encode(text);

        Assert.Equal(expected, ids);
        Assert.Equal(pieces, ids.Select(tokenizer.PieceOf));
        Assert.Equal(entry.GetProperty("decoded").GetString(), tokenizer.Decode(ids));
    }

    [Fact]
    public void BOS_and_EOS_come_from_the_model_and_are_added_on_request()
    {
        var tokenizer = Llama2.Value;
        Assert.Equal(32000, tokenizer.VocabSize);
        Assert.Equal(1, tokenizer.BosId);
        Assert.Equal(2, tokenizer.EosId);
        Assert.Equal([1, 15043, 3186, 2], tokenizer.Encode("Hello world", new EncodeOptions(AddBos: true, AddEos: true)));
    }

    [Fact]
    public void A_truncated_model_file_is_a_clear_error()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "tokenizer.model");
        File.WriteAllBytes(path, File.ReadAllBytes(Fixtures.PathOf("llama2-tokenizer/tokenizer.model"))[..1001]);

        var error = Assert.Throws<TokenizerFormatException>(() => SentencePieceTokenizer.Load(path));

        Assert.Equal(path, error.File);
        Assert.Contains("truncated", error.Message);
    }
}
