using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Tests;
using LLama;
using LLama.Common;
using LLama.Native;
using Xunit;

namespace KvPacket.LlamaCpp.Tests;

/// <summary>llama.cpp (through LLamaSharp's CPU backend) reads the GGUF files our writer makes.</summary>
public class GgufInteropTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static List<int> LlamaCppGreedy(string gguf, int[] prompt, int count)
    {
        var parameters = new ModelParams(gguf) { ContextSize = 256, Threads = 1, BatchSize = 64 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        var tokens = new List<int>();
        for (int position = prompt.Length; tokens.Count < count; position++)
        {
            Assert.Equal(DecodeResult.Ok, context.NativeHandle.Decode(batch));
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            int best = 0;
            for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[best]) best = v;
            tokens.Add(best);
            batch.Clear();
            batch.Add((LLamaToken)best, position, LLamaSeqId.Zero, true);
        }
        return tokens;
    }

    /// <remarks>
    /// f32 weights: the same 40 greedy tokens. f16 weights: llama.cpp rounds the activations to f16 before its f16 dot
    /// products (ggml's vec_dot_f16) where we keep them f32, and stories260K's logits are close enough for that to
    /// change the second token: there the file must load and the first token agree.
    /// </remarks>
    [Theory]
    [InlineData(DType.F32, 40)]
    [InlineData(DType.F16, 1)]
    public void Llama_cpp_loads_a_GGUF_we_wrote_and_decodes_our_greedy_tokens(DType weights, int count)
    {
        using var temp = Fixtures.TempDirectory();
        string gguf = Path.Combine(temp.Path, "stories260K.gguf");
        using (var checkpoint = CheckpointLoader.Load(Stories)) CheckpointExporter.WriteGguf(checkpoint, gguf, weights);
        int[] prompt = [1, 403, 407, 261, 300];
        var ours = new List<int>();
        using (var checkpoint = CheckpointLoader.Load(gguf))
        using (var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 256 }))
            new Generator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = count, StopTokens = [] }, ours.Add);

        Assert.Equal(ours, LlamaCppGreedy(gguf, prompt, count));
    }

    /// <summary>
    /// The block layouts, checked by the program that defined them: llama.cpp reads a 256-wide model we quantised and
    /// gives the logits ours gives from the same file, up to the two sides' activation rounding (ours int8 per 32 values;
    /// llama.cpp q8_0 per 32 for q4_0, q8_K per 256 for the k-quants). A nibble, bit or scale read from the wrong place
    /// moves them by several units (a swapped nibble order in q4_K: 4.6); measured 0.055–0.105 over the five types.
    /// </summary>
    [Theory]
    [InlineData("Q4_0")]
    [InlineData("Q4_K")]
    [InlineData("Q5_K")]
    [InlineData("Q6_K")]
    [InlineData("Q8_0")]
    [InlineData("Q4_K_M")]
    public void Llama_cpp_reads_our_block_quantised_GGUF_to_our_logits(string type)
    {
        using var temp = Fixtures.TempDirectory();
        var config = new KvPacket.Core.Model.ModelConfig
        {
            HiddenSize = 256, IntermediateSize = 512, LayerCount = 2, HeadCount = 4, KvHeadCount = 2, HeadDim = 64,
            VocabSize = 512, MaxContextLength = 512,
        };
        SyntheticCheckpoint.Write(config, DType.F32, Path.Combine(temp.Path, "f32"), seed: 5);
        string gguf = Path.Combine(temp.Path, $"model-{type}.gguf");
        var mix = QuantisationMix.Parse(type);
        using (var original = CheckpointLoader.Load(Path.Combine(temp.Path, "f32"))) CheckpointExporter.WriteGguf(original, gguf, mix);
        int[] prompt = [1, 17, 300, 42, 99, 256, 7];
        float[] ours;
        using (var checkpoint = CheckpointLoader.Load(gguf))
        {
            var value = mix.TypeOf("blk.0.attn_v.weight", 0, config.LayerCount);
            Assert.Equal(value.Interleaved() ?? value, checkpoint.Layers[0].Value.Type);
            ours = LastLogits(checkpoint, prompt);
        }

        var theirs = LlamaCppLastLogits(gguf, prompt);

        double max = 0;
        for (int v = 0; v < ours.Length; v++) max = Math.Max(max, Math.Abs(ours[v] - theirs[v]));
        Assert.InRange(max, 0, 0.2);
    }

    /// <summary>llama.cpp's logits after <paramref name="prompt"/> in one batch, with an f32 KV cache as ours (its default is f16).</summary>
    private static float[] LlamaCppLastLogits(string gguf, int[] prompt)
    {
        var parameters = new ModelParams(gguf) { ContextSize = 64, Threads = 1, BatchSize = 64, TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        Assert.Equal(DecodeResult.Ok, context.NativeHandle.Decode(batch));
        return context.NativeHandle.GetLogitsIth(batch.TokenCount - 1).ToArray();
    }

    private static float[] LastLogits(KvPacket.Core.Model.Checkpoint checkpoint, int[] prompt)
    {
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 64 });
        using var sequence = model.CreateSequence();
        var batch = new ForwardBatch(64, 1);
        batch.Add(sequence, prompt, LogitsFor.LastToken);
        var logits = new float[checkpoint.Config.VocabSize];
        model.Forward(batch, logits);
        return logits;
    }

    /// <summary>
    /// A Qwen2 model (q/k/v biases, tied embeddings, rotate-half RoPE) written as GGUF architecture qwen2: llama.cpp gives
    /// the logits we compute from the original safetensors, and our greedy tokens from the GGUF (f32 weights).
    /// </summary>
    [Fact]
    public void Llama_cpp_reads_a_qwen2_GGUF_we_wrote_to_our_logits_and_greedy_tokens()
    {
        using var temp = Fixtures.TempDirectory();
        string gguf = Path.Combine(temp.Path, "tiny-qwen2.gguf");
        using (var original = CheckpointLoader.Load(Fixtures.PathOf("tiny-qwen2"))) CheckpointExporter.WriteGguf(original, gguf, DType.F32);
        int[] prompt = [1, 17, 300, 42, 99, 256, 7];
        float[] ours;
        using (var original = CheckpointLoader.Load(Fixtures.PathOf("tiny-qwen2"))) ours = LastLogits(original, prompt);
        var greedy = new List<int>();
        using (var checkpoint = CheckpointLoader.Load(gguf))
        {
            Assert.Equal("qwen2", checkpoint.Config.Architecture);
            using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 256 });
            new Generator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 16, StopTokens = [] }, greedy.Add);
        }

        var theirs = LlamaCppLastLogits(gguf, prompt);
        // Measured 0.0064 with logits over ±5.7 (llama.cpp's CPU attention rounds through f16); q/k rows written in the
        // interleaved layout under this header moved them by 4.2.
        Assert.InRange(ours.Zip(theirs, (a, b) => Math.Abs(a - b)).Max(), 0, 0.02);
        Assert.Equal(greedy, LlamaCppGreedy(gguf, prompt, 16));
    }

    /// <summary>Llama-3 RoPE scaling written as llama.cpp's rope_freqs tensor: llama.cpp gives the original's logits.</summary>
    [Fact]
    public void Llama_cpp_reads_our_Llama_3_GGUF_with_its_rope_scaling_to_the_original_logits()
    {
        using var temp = Fixtures.TempDirectory();
        string gguf = Path.Combine(temp.Path, "tiny-llama3.gguf");
        int[] prompt = [1, 17, 300, 42, 99, 256, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
        float[] ours;
        using (var original = CheckpointLoader.Load(Fixtures.PathOf("tiny-llama3")))
        {
            CheckpointExporter.WriteGguf(original, gguf, DType.F32);
            ours = LastLogits(original, prompt);
        }
        var theirs = LlamaCppLastLogits(gguf, prompt);
        // Measured 0.011 with logits over -3.7..4.6; the same file without rope_freqs: 2.6.
        Assert.InRange(ours.Zip(theirs, (a, b) => Math.Abs(a - b)).Max(), 0, 0.03);
    }

    [Fact]
    public void A_vocabulary_we_write_into_a_GGUF_tokenizes_the_Llama_2_goldens_in_llama_cpp_and_in_our_GGUF_reader()
    {
        using var temp = Fixtures.TempDirectory();
        var original = SentencePieceTokenizer.Load(Fixtures.PathOf("llama2-tokenizer/tokenizer.model"));
        string gguf = VocabularyFiles.WriteGguf(temp.Path, GgufVocabulary.From(original));

        var read = Assert.IsType<SentencePieceTokenizer>(TokenizerLoader.TryLoadNextTo(gguf));
        Assert.Equal((original.VocabSize, original.BosId, original.EosId), (read.VocabSize, read.BosId, read.EosId));
        using var llama = LLamaWeights.LoadFromFile(new ModelParams(gguf) { VocabOnly = true });
        using var golden = JsonDocument.Parse(File.ReadAllText(Fixtures.PathOf("llama2-tokenizer/golden.json")));
        int cases = 0;
        foreach (var item in golden.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = item.GetProperty("text").GetString()!;
            int[] expected = item.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(expected, read.Encode(text));
            Assert.Equal(expected, llama.NativeHandle.Tokenize(text, false, false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray());
            Assert.Equal(item.GetProperty("decoded").GetString(), read.Decode(expected));
            cases++;
        }
        Assert.True(cases >= 20, $"only {cases} golden cases");
    }

    [Theory]
    [InlineData("bpe-gpt2")]
    [InlineData("bpe-llama3")]
    public void A_byte_level_BPE_we_write_into_a_GGUF_tokenizes_its_goldens_in_llama_cpp(string fixture)
    {
        using var temp = Fixtures.TempDirectory();
        var original = ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf($"{fixture}/tokenizer.json"));
        string gguf = VocabularyFiles.WriteGguf(temp.Path, GgufVocabulary.From(original));

        using var llama = LLamaWeights.LoadFromFile(new ModelParams(gguf) { VocabOnly = true });
        using var golden = Fixtures.Golden(fixture);
        int cases = 0;
        foreach (var item in golden.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = item.GetProperty("text").GetString()!;
            int[] expected = item.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(expected, llama.NativeHandle.Tokenize(text, false, false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray());
            cases++;
        }
        Assert.True(cases >= 20, $"only {cases} golden cases");
    }

    /// <summary>
    /// Our Qwen2 pre-tokenizer regex against llama.cpp's <c>qwen2</c> one: the Llama-3 fixture's vocabulary written with
    /// it, then the goldens' texts and digit-heavy ones tokenized by llama.cpp and by our reader of the same file.
    /// (The Llama-3 pattern keeps runs of three digits, so the two differ on every number.)
    /// </summary>
    [Fact]
    public void Our_qwen2_pre_tokenizer_splits_as_llama_cpps()
    {
        using var temp = Fixtures.TempDirectory();
        var llama3 = ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-llama3/tokenizer.json"));
        string gguf = VocabularyFiles.WriteGguf(temp.Path, GgufVocabulary.From(llama3) with { PreTokenizerPattern = PreTokenizer.Qwen2Pattern });
        Assert.Equal("qwen2", GgufReader.ReadMetadata(gguf)["tokenizer.ggml.pre"]);
        var ours = Assert.IsType<ByteLevelBpeTokenizer>(TokenizerLoader.TryLoadNextTo(gguf));
        using var llama = LLamaWeights.LoadFromFile(new ModelParams(gguf) { VocabOnly = true });
        using var golden = Fixtures.Golden("bpe-llama3");
        var texts = golden.RootElement.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("text").GetString()!)
            .Concat(["12345 and 2024-11-30, 3.14159 or 1,000,000!", "room 101\n\n  42nd street 7x9=63", "It's 99% DONE'LL we'd"]).ToList();
        int differs = 0;
        foreach (string text in texts)
        {
            int[] expected = llama.NativeHandle.Tokenize(text, false, false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();
            Assert.Equal(expected, ours.Encode(text));
            if (!expected.SequenceEqual(llama3.Encode(text))) differs++;
        }
        Assert.True(differs >= 3, $"only {differs} texts split differently from Llama-3's pattern");
    }

    [Fact]
    public void A_GGUF_of_a_model_without_a_tokenizer_loads_in_llama_cpp_and_offers_us_no_tokenizer()
    {
        using var temp = Fixtures.TempDirectory();
        string gguf = Path.Combine(temp.Path, "stories260K.gguf");
        using (var checkpoint = CheckpointLoader.Load(Stories)) CheckpointExporter.WriteGguf(checkpoint, gguf, DType.F32);
        Assert.Null(TokenizerLoader.TryLoadNextTo(gguf)); // the placeholder pieces mean nothing as text
        using var llama = LLamaWeights.LoadFromFile(new ModelParams(gguf) { VocabOnly = true });
        Assert.Equal(512, llama.Vocab.Count);
    }
}
