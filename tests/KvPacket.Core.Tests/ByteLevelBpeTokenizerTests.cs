using System.Text;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using KvPacket.Core.Tokenization;
using Xunit;

namespace KvPacket.Tests;

public class ByteLevelBpeTokenizerTests
{
    private static readonly Lazy<ByteLevelBpeTokenizer> Gpt2 = new(() => ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-gpt2/tokenizer.json")));
    private static readonly Lazy<ByteLevelBpeTokenizer> Llama3 = new(() => ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-llama3/tokenizer.json")));

    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (string model in new[] { "bpe-gpt2", "bpe-llama3" })
            for (int i = 0; i < 30; i++) data.Add(model, i);
        return data;
    }

    private static ByteLevelBpeTokenizer For(string model) => model == "bpe-gpt2" ? Gpt2.Value : Llama3.Value;

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_golden_string_encodes_to_the_reference_ids_and_decodes_back(string model, int index)
    {
        var (text, expected, decoded) = Golden(model, index);
        var tokenizer = For(model);

        int[] ids = tokenizer.Encode(text);

        Assert.Equal(expected, ids);
        Assert.Equal(decoded, tokenizer.Decode(ids));
    }

    [Fact]
    public void The_two_pre_tokenizer_styles_are_read_from_the_files()
    {
        Assert.Equal(PreTokenizer.Gpt2Pattern, Gpt2.Value.PreTokenizerPattern);
        Assert.Equal(PreTokenizer.Llama3Pattern, Llama3.Value.PreTokenizerPattern);
        Assert.Equal(0, Gpt2.Value.SpecialTokens["<|endoftext|>"]);
    }

    [Fact]
    public void Added_tokens_are_matched_before_BPE()
    {
        var tokenizer = Llama3.Value;
        int[] ids = tokenizer.Encode("Hello<|endoftext|>world");
        Assert.Contains(0, ids);
        Assert.Equal(tokenizer.Encode("Hello").Concat([0]).Concat(tokenizer.Encode("world")), ids);
        Assert.Equal("Hello<|endoftext|>world", tokenizer.Decode(ids));
    }

    /// <summary>The same vocabulary as a tiktoken file (base64 bytes and rank) must encode exactly as its tokenizer.json.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(11)]
    [InlineData(16)]
    [InlineData(18)]
    [InlineData(21)]
    [InlineData(28)]
    public void A_tiktoken_file_of_the_same_vocabulary_gives_the_same_ids(int index)
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "tokenizer.model");
        var reference = Llama3.Value;
        File.WriteAllLines(path, Enumerable.Range(0, reference.VocabSize)
            .Where(id => !reference.SpecialTokens.Values.Contains(id))
            .Select(id => $"{Convert.ToBase64String(reference.TokenBytes(id))} {id}"));
        var tiktoken = ByteLevelBpeTokenizer.LoadTiktoken(path, specialTokens: []);
        var (text, expected, _) = Golden("bpe-llama3", index);

        Assert.Equal(expected, tiktoken.Encode(text));
    }

    [Fact]
    public void Malformed_files_name_what_is_wrong()
    {
        using var temp = Fixtures.TempDirectory();
        string noModel = Path.Combine(temp.Path, "a.json");
        File.WriteAllText(noModel, """{"version": "1.0", "added_tokens": []}""");
        Assert.Equal("model", Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(noModel)).Field);

        string badMerge = Path.Combine(temp.Path, "b.json");
        File.WriteAllText(badMerge, """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a zz"]}}""");
        var error = Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(badMerge));
        Assert.Equal("model.merges[1]", error.Field);
        Assert.Contains("unknown token 'zz'", error.Message);

        string missingBytes = Path.Combine(temp.Path, "e.json");
        File.WriteAllText(missingBytes, """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}""");
        error = Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(missingBytes));
        Assert.Equal("vocabulary", error.Field);
        Assert.Contains("no token for the byte 0x00", error.Message);

        string notJson = Path.Combine(temp.Path, "c.json");
        File.WriteAllText(notJson, "{ \"model\": ");
        Assert.Contains("not valid JSON", Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadHuggingFace(notJson)).Message);

        string badTiktoken = Path.Combine(temp.Path, "d.model");
        File.WriteAllText(badTiktoken, "IQ== 0\nnot-base64! 1\n");
        Assert.Equal("line 2", Assert.Throws<TokenizerFormatException>(() => ByteLevelBpeTokenizer.LoadTiktoken(badTiktoken)).Field);
    }

    [Property(MaxTest = 300)]
    public void Decode_of_encode_is_the_identity_on_well_formed_text(string? text)
    {
        text ??= "";
        bool wellFormed = Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(text)) == text;
        foreach (var tokenizer in new[] { Gpt2.Value, Llama3.Value })
        {
            string decoded = tokenizer.Decode(tokenizer.Encode(text)); // never throws, lone surrogates included
            if (wellFormed) Assert.Equal(text, decoded);
        }
    }

    [Property(MaxTest = 300)]
    public void Unicode_strings_built_from_any_code_points_round_trip(int[] codePoints)
    {
        var builder = new StringBuilder();
        foreach (int cp in codePoints ?? [])
        {
            int value = Math.Abs(cp % 0x110000);
            if (value is >= 0xD800 and <= 0xDFFF) value -= 0x800;
            builder.Append(char.ConvertFromUtf32(value));
        }
        string text = builder.ToString();
        Assert.Equal(text, Llama3.Value.Decode(Llama3.Value.Encode(text)));
    }

    [Property(MaxTest = 300)]
    public void Streaming_decode_concatenated_equals_whole_decode_even_for_invalid_UTF8(int[] raw)
    {
        Span<char> buffer = stackalloc char[256];
        foreach (ITokenizer tokenizer in new ITokenizer[] { Gpt2.Value, SentencePieceTokenizerFixture.Llama2 })
        {
            int[] ids = (raw ?? []).Select(v => Math.Abs(v % tokenizer.VocabSize)).ToArray();
            var stream = new TokenStreamDecoder(tokenizer);
            var builder = new StringBuilder();
            foreach (int id in ids) builder.Append(buffer[..stream.Append(id, buffer)]);
            builder.Append(buffer[..stream.Flush(buffer)]);
            Assert.Equal(tokenizer.Decode(ids), builder.ToString());
        }
    }

    [Fact]
    public void Streaming_decode_holds_a_character_split_across_byte_tokens()
    {
        var tokenizer = SentencePieceTokenizerFixture.Llama2;
        int[] ids = tokenizer.Encode("a 😀");     // ▁a ▁ <0xF0> <0x9F> <0x98> <0x80>
        var stream = new TokenStreamDecoder(tokenizer);
        var pieces = ids.Select(id => stream.Append(id)).ToArray();
        Assert.Equal(["a", " ", "", "", "", "😀"], pieces);
    }

    private static (string Text, int[] Ids, string Decoded) Golden(string model, int index)
    {
        using var golden = Fixtures.Golden(model);
        var entry = golden.RootElement.GetProperty("cases")[index];
        return (entry.GetProperty("text").GetString()!, entry.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            entry.GetProperty("decoded").GetString()!);
    }
}

internal static class SentencePieceTokenizerFixture
{
    private static readonly Lazy<SentencePieceTokenizer> Model = new(() => SentencePieceTokenizer.Load(Fixtures.PathOf("llama2-tokenizer/tokenizer.model")));
    public static SentencePieceTokenizer Llama2 => Model.Value;
}

public class TokenizerLoaderTests
{
    [Fact]
    public void The_loader_tells_the_three_formats_apart_and_finds_the_tokenizer_next_to_weights()
    {
        using var temp = Fixtures.TempDirectory();
        var reference = ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-gpt2/tokenizer.json"));
        string tiktoken = Path.Combine(temp.Path, "tokenizer.model");
        File.WriteAllLines(tiktoken, Enumerable.Range(1, reference.VocabSize - 1).Select(id => $"{Convert.ToBase64String(reference.TokenBytes(id))} {id}"));
        File.WriteAllBytes(Path.Combine(temp.Path, "model.safetensors"), []);

        Assert.IsType<SentencePieceTokenizer>(TokenizerLoader.Load(Fixtures.PathOf("llama2-tokenizer/tokenizer.model")));
        Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.Load(Fixtures.PathOf("bpe-gpt2")));
        var fromTiktoken = TokenizerLoader.TryLoadNextTo(Path.Combine(temp.Path, "model.safetensors"));
        Assert.NotNull(fromTiktoken);
        Assert.Equal(reference.VocabSize + 256, fromTiktoken.VocabSize);   // Llama-3 special tokens follow the ranks
        Assert.Null(TokenizerLoader.TryLoadNextTo(Fixtures.PathOf("tiny-qwen2")));
    }
}
