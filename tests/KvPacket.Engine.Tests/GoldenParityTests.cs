using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using Xunit;

namespace KvPacket.Tests;

public class GoldenParityTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    [Theory]
    [InlineData("stories260K")]
    [InlineData("tiny-qwen2")]
    [InlineData("tiny-llama3")]
    public void Logits_at_every_position_match_the_reference(string model)
    {
        string path = model == "stories260K" ? Stories : Fixtures.PathOf(model);
        using var checkpoint = CheckpointLoader.Load(path);
        var (tokens, expected) = ReferenceModels.GoldenLogits(model);

        var logits = ReferenceModels.AllLogits(checkpoint, tokens);

        Assert.Equal(tokens.Length, expected.Length);
        Assert.InRange(ReferenceModels.MaxAbsDifference(logits, expected), 0, 1e-4);
    }

    /// <summary>
    /// A Hugging Face cache snapshot is a directory of symbolic links into <c>blobs/</c> named by hash: the model must
    /// load through the links (the length of a link is that of its target's path, not of the weights).
    /// </summary>
    [Fact]
    public void A_model_in_the_hugging_face_cache_layout_of_symbolic_links_gives_the_golden_logits()
    {
        string cache = Directory.CreateTempSubdirectory("kvpacket-hf-cache-").FullName;
        try
        {
            string blobs = Directory.CreateDirectory(Path.Combine(cache, "blobs")).FullName;
            string snapshot = Directory.CreateDirectory(Path.Combine(cache, "snapshots", "0123abcd")).FullName;
            foreach (string file in Directory.GetFiles(Fixtures.PathOf("tiny-qwen2")))
            {
                string blob = Path.Combine(blobs, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file))));
                File.Copy(file, blob);
                File.CreateSymbolicLink(Path.Combine(snapshot, Path.GetFileName(file)), Path.Combine("..", "..", "blobs", Path.GetFileName(blob)));
            }
            Assert.NotNull(new FileInfo(Path.Combine(snapshot, "model.safetensors")).LinkTarget);
            using var checkpoint = CheckpointLoader.Load(snapshot);
            var (tokens, expected) = ReferenceModels.GoldenLogits("tiny-qwen2");
            Assert.InRange(ReferenceModels.MaxAbsDifference(ReferenceModels.AllLogits(checkpoint, tokens), expected), 0, 1e-4);
        }
        finally { Directory.Delete(cache, recursive: true); }
    }

    [Fact]
    public void Greedy_generation_from_BOS_matches_the_reference_program_with_f32_KV()
    {
        int[] expected = GreedyFromBos();
        Assert.Equal(expected, Generate(DType.F32, expected.Length - 1));
    }

    /// <summary>
    /// With f16 KV the greedy tokens match the reference until generated step 37, where the reference's top two
    /// logits (416 vs 417) are 0.0029 apart in f32: rounding keys to f16 moves that pair by ~0.01 and flips it.
    /// Everywhere else f16 KV must stay close to f32.
    /// </summary>
    [Fact]
    public void Greedy_generation_with_f16_KV_matches_the_reference_up_to_its_first_near_tie()
    {
        const int NearTie = 37;
        int[] expected = GreedyFromBos();
        int[] actual = Generate(DType.F16, expected.Length - 1);
        Assert.Equal(expected[..(NearTie + 1)], actual[..(NearTie + 1)]);

        using var checkpoint = CheckpointLoader.Load(Stories);
        var (tokens, golden) = ReferenceModels.GoldenLogits("stories260K");
        Assert.InRange(ReferenceModels.MaxAbsDifference(ReferenceModels.AllLogits(checkpoint, tokens, DType.F16), golden), 0, 0.05);
    }

    private static int[] GreedyFromBos()
    {
        using var golden = Fixtures.Golden("stories260K");
        return golden.RootElement.GetProperty("greedy_from_bos").GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
    }

    private static int[] Generate(DType kvType, int count)
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var transformer = new Transformer(checkpoint, new TransformerOptions { KvType = kvType, KvCacheTokens = 512, MaxBatchTokens = 64 });
        var generated = new List<int> { 1 };
        var stats = new Generator(transformer).Generate([1], new GenerationOptions { MaxNewTokens = count, StopTokens = [] }, generated.Add);
        Assert.Equal(count, stats.GeneratedTokens);
        return generated.ToArray();
    }
}
