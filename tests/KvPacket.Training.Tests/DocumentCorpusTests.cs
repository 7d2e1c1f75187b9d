using KvPacket.Core.Tokenization;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Training.Tests;

public class DocumentCorpusTests
{
    [Fact]
    public void A_token_file_is_cut_into_documents_and_a_bad_id_names_its_line()
    {
        using var temp = Fixtures.TempDirectory();
        string path = Path.Combine(temp.Path, "docs.tokens");
        File.WriteAllLines(path, ["1 2 3 4 5 6 7", "", "8 9 10 11"]);
        var documents = DocumentCorpus.FromTokenFile(path, vocabSize: 32, length: 3);
        Assert.Equal([[1, 2, 3], [4, 5, 6], [8, 9, 10]], documents);

        File.WriteAllLines(path, ["1 2 3", "4 x 6"]);
        var error = Assert.Throws<InvalidDataException>(() => DocumentCorpus.FromTokenFile(path, 32, 3));
        Assert.Contains("line 2", error.Message);
        Assert.Contains("'x'", error.Message);
        File.WriteAllLines(path, ["1 2 40"]);
        Assert.Contains("vocabulary size 32", Assert.Throws<InvalidDataException>(() => DocumentCorpus.FromTokenFile(path, 32, 3)).Message);
    }

    [Fact]
    public void Text_files_are_encoded_with_the_tokenizer_and_cut_per_file()
    {
        using var temp = Fixtures.TempDirectory();
        var tokenizer = TokenizerLoader.Load(Fixtures.PathOf("llama2-tokenizer/tokenizer.model"));
        string first = "Once upon a time there was a little robot who loved to read books about the sea.";
        string second = "The cat sat on the mat and looked out of the window at the falling snow all afternoon.";
        File.WriteAllText(Path.Combine(temp.Path, "a.txt"), first);
        File.WriteAllText(Path.Combine(temp.Path, "b.txt"), second);
        var documents = DocumentCorpus.FromText(temp.Path, tokenizer, length: 8);
        int[] a = tokenizer.Encode(first), b = tokenizer.Encode(second);
        Assert.Equal(a.Length / 8 + b.Length / 8, documents.Length); // each file's shorter tail is dropped, never joined to the next file
        Assert.Equal(a[..8], documents[0]);
        Assert.Equal(b[..8], documents[a.Length / 8]);
        string empty = Directory.CreateDirectory(Path.Combine(temp.Path, "empty")).FullName;
        Assert.Contains("no .txt files", Assert.Throws<InvalidDataException>(() => DocumentCorpus.FromText(empty, tokenizer, 8)).Message);
    }

    [Fact]
    public void Requests_take_documents_in_groups_and_the_next_ones_start_as_the_query()
    {
        int[][] documents = [.. Enumerable.Range(0, 7).Select(i => Enumerable.Range(10 * i, 5).ToArray())];
        var requests = DocumentCorpus.Requests(documents, perRequest: 2, queryTokens: 3, prefix: [1]);
        Assert.Equal(2, requests.Length); // 7 documents make two groups of 2 + 1; the 7th is left over
        Assert.Equal([documents[0], documents[1]], requests[0].Documents);
        Assert.Equal([20, 21, 22], requests[0].Query);
        Assert.Equal([documents[3], documents[4]], requests[1].Documents);
        Assert.Equal([50, 51, 52], requests[1].Query);
    }
}
