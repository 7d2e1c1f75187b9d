using KvPacket.Compute.Cpu;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Specialised;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Generators.Tests;

/// <summary>The specs generated from this repository's own cards against the generic kernels they replace.</summary>
public unsafe class SpecialisedKernelTests
{
    public static TheoryData<string> Cards() => [.. ModelCard.All.Select(c => c.Name)];

    [Fact]
    public void Every_card_in_models_has_a_generated_spec()
    {
        Assert.Equal(ModelCard.All.Select(c => c.Name).Order(), ModelSpec.All.Select(s => s.Name).Order());
        foreach (var card in ModelCard.All) Assert.Equal(card.Name, ModelSpec.For(card.Config)?.Name);
    }

    [Theory]
    [MemberData(nameof(Cards))]
    public void Specialised_and_generic_attention_kernels_agree(string name)
    {
        var spec = ModelSpec.All.Single(s => s.Name == name);
        int d = spec.HeadDim;
        var generic = new GenericHeadKernels(d);
        var random = new SeededRandom((ulong)name.Length * 31);
        for (int trial = 0; trial < 20; trial++)
        {
            int count = 1 + (int)(random.NextUInt64() % 16);
            float[] q = Random(ref random, d), keys = Random(ref random, count * d), weights = Random(ref random, count), start = Random(ref random, d);
            float[] expected = new float[count], actual = new float[count];
            float[] expectedOut = (float[])start.Clone(), actualOut = (float[])start.Clone();
            fixed (float* pq = q, pk = keys, pw = weights, pe = expected, pa = actual, peo = expectedOut, pao = actualOut)
            {
                generic.Scores(pq, pk, count, pe, 0.125f);
                spec.HeadKernels.Scores(pq, pk, count, pa, 0.125f);
                generic.Accumulate(pw, pk, count, peo);
                spec.HeadKernels.Accumulate(pw, pk, count, pao);
            }
            Assert.True(ReferenceModels.MaxAbs(expected, actual) <= 1e-5, $"{name} scores differ by {ReferenceModels.MaxAbs(expected, actual)}");
            Assert.True(ReferenceModels.MaxAbs(expectedOut, actualOut) <= 1e-5, $"{name} accumulate differs by {ReferenceModels.MaxAbs(expectedOut, actualOut)}");
        }
    }

    [Theory]
    [MemberData(nameof(Cards))]
    public void The_generated_rope_table_is_the_runtime_table(string name)
    {
        var spec = ModelSpec.All.Single(s => s.Name == name);
        var card = ModelCard.Find(name);
        Assert.Equal(RotaryEmbedding.Frequencies(card.Config), spec.InverseFrequencies.ToArray());
        Assert.Contains($"#define HEAD_DIM {card.Config.HeadDim}\n", spec.CudaSource.Replace("\r\n", "\n"));
        Assert.Contains("extern \"C\" __global__ void attention_decode(", spec.CudaSource);
        Assert.Contains($"#define HEAD_DIM {card.Config.HeadDim}", ModelSpec.GenericCudaSource(card.Config, 16));
    }

    [Fact]
    public void Stories260K_runs_on_its_specialised_kernels_and_matches_golden_and_the_generic_path()
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf("stories260K/stories260K.bin"));
        var options = new TransformerOptions { KvType = Core.Memory.DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 256 };
        using var specialised = new Transformer(checkpoint, options);
        using var generic = new Transformer(checkpoint, options with { SpecialisedKernels = false });
        Assert.Equal("stories260k", specialised.Spec?.Name);
        Assert.Null(generic.Spec);

        var (tokens, golden) = ReferenceModels.GoldenLogits("stories260K");
        float[] Logits(Transformer model)
        {
            using var sequence = model.CreateSequence();
            var logits = new float[tokens.Length * 512];
            model.Prefill(sequence, tokens, logits, LogitsFor.AllTokens);
            return logits;
        }
        float[] fast = Logits(specialised), slow = Logits(generic);
        Assert.True(ReferenceModels.MaxAbs(fast, slow) <= 1e-5);
        for (int p = 0; p < tokens.Length; p++)
            for (int v = 0; v < 512; v++)
                Assert.True(Math.Abs(fast[p * 512 + v] - golden[p][v]) <= 1e-4, $"position {p} token {v}");
    }

    private static float[] Random(ref SeededRandom random, int n)
    {
        var values = new float[n];
        for (int i = 0; i < n; i++) values[i] = random.NextSingle() * 2 - 1;
        return values;
    }
}
