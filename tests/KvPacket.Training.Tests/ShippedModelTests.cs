using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Tests;
using KvPacket.Training.Qa;
using Xunit;

namespace KvPacket.Training.Tests;

/// <summary>The QA model the product ships (models/kvqa-17m): it loads, reads its own tokenizer, and answers from documents.</summary>
public class ShippedModelTests
{
    private static readonly string ModelPath = Fixtures.ShippedModel("kvqa-17m");

    [Fact]
    public void It_answers_20_fixed_test_questions_with_full_recompute_at_80_percent_exact_match_and_not_from_memory()
    {
        using var checkpoint = CheckpointLoader.Load(ModelPath);
        var tokenizer = TokenizerLoader.TryLoadNextTo(ModelPath)!;
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, MaxBatchTokens = 512, KvCacheTokens = 8192 });
        var (_, test, _) = QaBenchmark.HeldOutWorlds(1);
        var questions = QaBenchmark.Generate(test, "test", 3, 20).ToList();   // test.jsonl's first 20 lines (kvpacket corpus --seed 1)
        var trace = new Core.Diagnostics.TraceRecorder();
        var evaluation = new QaEvaluation(model, tokenizer) { Trace = trace, TraceModes = ["full", QaEvaluation.ClosedBook] };

        var full = questions.Select(q => evaluation.Answer(q, "full")).ToList();
        var closedBook = questions.Where(q => q.Type != "comparison").Select(q => evaluation.Answer(q, QaEvaluation.ClosedBook)).ToList();
        // eval --trace: a prefill and a decode span per answer, on its mode's row.
        using (var buffer = new MemoryStream())
        {
            trace.WriteChromeTrace(buffer);
            var spans = System.Text.Json.JsonDocument.Parse(buffer.ToArray()).RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            Assert.Equal(full.Count, spans.Count(e => e.GetProperty("name").GetString() == "prefill" && e.GetProperty("tid").GetInt32() == 0));
            Assert.Equal(closedBook.Count, spans.Count(e => e.GetProperty("name").GetString() == "decode" && e.GetProperty("tid").GetInt32() == 1));
        }

        double exact = full.Average(a => AnswerScore.ExactMatch(a.Prediction, a.Gold));
        Assert.True(exact >= 0.8, $"full recompute exact match {exact:F2}: " + string.Join("; ", full.Where(a => a.F1 < 1).Select(a => $"'{a.Question}' gold '{a.Gold}' got '{a.Prediction}'")));
        // Without the documents it cannot know invented facts (comparisons name both candidates, so they are left out).
        Assert.True(closedBook.Average(a => a.F1) <= 0.1, $"closed-book F1 {closedBook.Average(a => a.F1):F2}");
    }

    [Fact]
    public void Its_kv_packet_adapter_answers_the_20_questions_from_int8_pages_as_well_as_full_recompute_does()
    {
        // eval --int8-pages: every packet built, stored as int8 in a packet store and served as read back.
        using var temp = Fixtures.TempDirectory();
        using var checkpoint = CheckpointLoader.Load(ModelPath);
        var tokenizer = TokenizerLoader.TryLoadNextTo(ModelPath)!;
        var adapter = AdapterFile.Read(Path.Combine(ModelPath, "kvpacket-adapter.safetensors"), ModelFingerprint.Of(checkpoint), checkpoint.Config.HiddenSize);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, MaxBatchTokens = 512, KvCacheTokens = 8192 });
        using var store = Store.PacketStore.Open(temp.Path);
        using var int8 = new Store.StoredPackets(model, store, Store.KvStorage.Int8);
        var questions = QaBenchmark.Generate(QaBenchmark.HeldOutWorlds(1).Test, "test", 3, 20).ToList();
        var evaluation = new QaEvaluation(model, tokenizer, adapter, int8);

        var answers = questions.Select(q => evaluation.Answer(q, "kvpacket")).ToList();
        Assert.True(int8.Builds >= questions.Max(q => q.Documents.Length), $"{int8.Builds} packets built");
        Assert.All(store.List(0, 1000), p => Assert.Equal(Store.KvStorage.Int8, p.Storage));
        double exact = answers.Average(a => AnswerScore.ExactMatch(a.Prediction, a.Gold));
        Assert.True(exact >= 0.8, $"KV Packet from int8 pages, exact match {exact:F2}: " + string.Join("; ", answers.Where(a => a.F1 < 1).Select(a => $"'{a.Question}' gold '{a.Gold}' got '{a.Prediction}'")));
    }

    [Fact]
    public void A_split_with_questions_too_long_for_its_context_is_refused_before_any_is_answered()
    {
        using var checkpoint = CheckpointLoader.Load(ModelPath);
        var tokenizer = TokenizerLoader.TryLoadNextTo(ModelPath)!;
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096 });
        var (_, test, _) = QaBenchmark.HeldOutWorlds(1);
        var fits = QaBenchmark.Generate(test, "test", 3, 1).Single();
        var tooLong = QaBenchmark.Generate(test, "test", 5, 2, minDocuments: 44, maxDocuments: 44).ToList();
        var adapter = Adapter.Untrained("probe", checkpoint.Config.HiddenSize, header: 2, trailer: 3, links: 5);
        var evaluation = new QaEvaluation(model, tokenizer, adapter);

        // Soft tokens count: KV Packet places 2 + 3 beside each document, KVLink 5.
        Assert.Equal(evaluation.PromptPositions(fits, "naive") + 5 * fits.Documents.Length, evaluation.PromptPositions(fits, "kvpacket"));
        Assert.Equal(evaluation.PromptPositions(fits, "naive") + 5 * fits.Documents.Length, evaluation.PromptPositions(fits, "kvlink"));
        Assert.True(evaluation.PromptPositions(fits, QaEvaluation.ClosedBook) < evaluation.PromptPositions(fits, "full"));

        int answered = 0;
        var error = Assert.Throws<ArgumentException>(() => evaluation.Run([fits, .. tooLong], ["full", "kvpacket"], _ => answered++));
        Assert.Equal(0, answered);
        Assert.Contains($"2 of 3 questions do not fit the model's {checkpoint.Config.MaxContextLength} positions", error.Message);
        Assert.Contains(tooLong[0].Id, error.Message);
    }

    [Fact]
    public void Its_tokenizer_round_trips_the_benchmark_text_and_its_adapters_load_for_it_alone()
    {
        var tokenizer = TokenizerLoader.TryLoadNextTo(ModelPath)!;
        Assert.Equal(8192, tokenizer.VocabSize);
        var (_, test, _) = QaBenchmark.HeldOutWorlds(1);
        foreach (var example in QaBenchmark.Generate(test, "test", 3, 40))
            foreach (string text in example.Documents.Select(QaPrompt.DocumentText).Append(QaPrompt.QuestionText(example.Question)))
                Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));

        using var checkpoint = CheckpointLoader.Load(ModelPath);
        var fingerprint = ModelFingerprint.Of(checkpoint);
        int hidden = checkpoint.Config.HiddenSize;
        var packet = AdapterFile.Read(Path.Combine(ModelPath, "kvpacket-adapter.safetensors"), fingerprint, hidden);
        var links = AdapterFile.Read(Path.Combine(ModelPath, "kvlink-adapter.safetensors"), fingerprint, hidden);
        Assert.True(packet.Header.Length > 0 && packet.Header.Any(v => v != 0));   // header 1, no trailer
        Assert.True(links.Links.Length > 0 && links.Links.Any(v => v != 0));

        using var other = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        var error = Assert.Throws<InvalidDataException>(() => AdapterFile.Read(Path.Combine(ModelPath, "kvpacket-adapter.safetensors"), ModelFingerprint.Of(other), hidden));
        Assert.Contains("trained for model", error.Message);
    }
}
