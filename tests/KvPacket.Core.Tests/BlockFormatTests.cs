using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Core.Tests;

/// <summary>The GGML block formats: quantise → dequantise error per type, edge blocks, damaged scales refused at load.</summary>
public class BlockFormatTests
{
    /// <summary>
    /// Normal-ish weights (sum of uniforms) quantised and read back: the RMS error relative to the values' RMS stays under a
    /// bound per type — about half a step of each format's grid (q8_0 255 levels per block; q6_K 64; q5_K 32; q4_K and
    /// q4_0 16), with room for the 6- and 8-bit rounding of the sub-block scales. A layout error (a nibble or bit taken from
    /// the wrong place) gives errors of the order of the values themselves.
    /// </summary>
    [Theory]
    [InlineData(DType.Q8_0, 0.006)]
    [InlineData(DType.Q6_K, 0.025)]
    [InlineData(DType.Q5_K, 0.05)]
    [InlineData(DType.Q4_K, 0.10)]
    [InlineData(DType.Q4_0, 0.12)]
    public void Quantised_values_read_back_within_the_formats_step(DType type, double relativeRms)
    {
        var random = new SeededRandom(11);
        var values = new float[4096];
        for (int i = 0; i < values.Length; i++) values[i] = (random.NextSingle() + random.NextSingle() + random.NextSingle() - 1.5f) * 0.05f;
        var blocks = new byte[type.BytesFor(values.Length)];
        BlockQuantisation.Quantise(type, values, blocks);
        var back = new float[values.Length];
        BlockQuantisation.Dequantise(type, blocks, back);

        double error = 0, energy = 0;
        for (int i = 0; i < values.Length; i++)
        {
            error += (values[i] - (double)back[i]) * (values[i] - back[i]);
            energy += (double)values[i] * values[i];
        }
        Assert.InRange(Math.Sqrt(error / energy), 0, relativeRms);
    }

    [Theory]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q4_K)]
    [InlineData(DType.Q5_K)]
    [InlineData(DType.Q6_K)]
    [InlineData(DType.Q8_0)]
    public void Zeros_one_signed_blocks_and_a_lone_spike_survive(DType type)
    {
        int n = type.BlockLength() * 2;
        var values = new float[n];
        for (int i = 0; i < n / 2; i++) values[i] = 0.5f + i % 7 * 0.01f;      // all positive
        for (int i = n / 2; i < n; i++) values[i] = -0.3f - i % 5 * 0.02f;    // all negative
        var back = RoundTrip(type, values);
        for (int i = 0; i < n; i++) Assert.Equal(values[i], back[i], 0.06);

        Assert.All(RoundTrip(type, new float[n]), v => Assert.Equal(0f, v));

        var spike = new float[n];
        spike[3] = -2.5f;
        Assert.Equal(-2.5f, RoundTrip(type, spike)[3], 0.01);
    }

    private static float[] RoundTrip(DType type, float[] values)
    {
        var blocks = new byte[type.BytesFor(values.Length)];
        BlockQuantisation.Quantise(type, values, blocks);
        var back = new float[values.Length];
        BlockQuantisation.Dequantise(type, blocks, back);
        return back;
    }

    [Theory]
    [InlineData(DType.Q8_0, 0)]
    [InlineData(DType.Q4_0, 0)]
    [InlineData(DType.Q4_K, 0)]
    [InlineData(DType.Q4_K, 2)]   // dmin
    [InlineData(DType.Q5_K, 2)]
    [InlineData(DType.Q6_K, Q6_K.DOffset)]
    public void A_block_with_an_infinite_or_NaN_scale_is_refused_naming_the_tensor_and_block(DType type, int scaleOffset)
    {
        using var temp = Fixtures.TempDirectory();
        int columns = 512, rows = 3;
        var values = new float[rows * columns];
        for (int i = 0; i < values.Length; i++) values[i] = MathF.Sin(i);
        var bytes = new byte[type.BytesFor(values.Length)];
        BlockQuantisation.Quantise(type, values, bytes);
        int damaged = 5;
        bytes[damaged * type.BlockBytes() + scaleOffset] = 0x00;
        bytes[damaged * type.BlockBytes() + scaleOffset + 1] = 0x7C; // +infinity
        string path = Path.Combine(temp.Path, "damaged.gguf");
        GgufWriter.Write(path, [new("general.architecture", "llama")],
            [new TensorToWrite("blk.0.attn_q.weight", type, [rows, columns], stream => stream.Write(bytes))]);

        var error = Assert.Throws<CheckpointFormatException>(() => GgufReader.Read(path));

        Assert.Equal("blk.0.attn_q.weight", error.Field);
        Assert.Contains($"block {damaged} has an infinite or NaN scale", error.Message);
    }

    [Fact]
    public void A_k_quant_tensor_whose_rows_are_not_whole_super_blocks_is_refused_by_the_size_rules()
    {
        Assert.Throws<ArgumentException>(() => DType.Q4_K.BytesFor(896));
        Assert.Equal(DType.Q4_0, CheckpointExporter.RowType(DType.Q4_K, 896));
        Assert.Equal(DType.Q8_0, CheckpointExporter.RowType(DType.Q6_K, 896));
        Assert.Equal(DType.F16, CheckpointExporter.RowType(DType.Q4_K, 172));
        Assert.Equal(DType.Q5_K, CheckpointExporter.RowType(DType.Q5_K, 4864));
    }
}

public class QuantisationMixTests
{
    [Fact]
    public void Q4_K_M_keeps_more_bits_where_llama_cpp_does()
    {
        var mix = QuantisationMix.Q4_K_M;
        // 16 layers (Llama-3.2-1B): the first and last two, and every third from layer 4.
        int[] sixBit = Enumerable.Range(0, 16).Where(i => mix.TypeOf($"blk.{i}.ffn_down.weight", i, 16) == DType.Q6_K).ToArray();
        Assert.Equal([0, 1, 4, 7, 10, 13, 14, 15], sixBit);
        Assert.Equal(sixBit, Enumerable.Range(0, 16).Where(i => mix.TypeOf($"blk.{i}.attn_v.weight", i, 16) == DType.Q6_K).ToArray());
        Assert.All(Enumerable.Range(0, 16), i => Assert.Equal(DType.Q4_K, mix.TypeOf($"blk.{i}.attn_q.weight", i, 16)));
        Assert.Equal(DType.Q6_K, mix.TypeOf("output.weight", -1, 16));
        Assert.Equal(DType.Q4_K, mix.TypeOf("token_embd.weight", -1, 16));
        Assert.Equal(DType.Q5_K, QuantisationMix.Parse("q5_k").TypeOf("blk.3.ffn_down.weight", 3, 16));
        Assert.Contains("Q4_K_M", Assert.Throws<ArgumentException>(() => QuantisationMix.Parse("Q3_K_S")).Message);
    }
}
