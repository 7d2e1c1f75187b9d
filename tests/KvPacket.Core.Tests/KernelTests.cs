using KvPacket.Compute.Cpu;
using KvPacket.Compute.Threading;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using Xunit;

namespace KvPacket.Tests;

/// <summary>Each CPU kernel against a float64 reference.</summary>
public unsafe class KernelTests
{
    [Theory]
    [InlineData(DType.F32, 1, 37, 64)]
    [InlineData(DType.F32, 7, 70, 96)]
    [InlineData(DType.BF16, 1, 45, 128)]
    [InlineData(DType.BF16, 5, 33, 100)]
    [InlineData(DType.F16, 1, 19, 80)]
    [InlineData(DType.F16, 9, 64, 64)]
    [InlineData(DType.F32, 64, 300, 896)]
    [InlineData(DType.BF16, 64, 300, 896)]
    [InlineData(DType.Q8_0, 1, 45, 128)]
    [InlineData(DType.Q8_0, 1, 21, 1088)]
    [InlineData(DType.Q8_0, 9, 64, 96)]
    [InlineData(DType.Q4_0, 1, 45, 128)]
    [InlineData(DType.Q4_0, 5, 21, 1088)]
    [InlineData(DType.Q4_K, 1, 45, 512)]
    [InlineData(DType.Q4_K, 7, 19, 1280)]
    [InlineData(DType.Q5_K, 1, 45, 512)]
    [InlineData(DType.Q5_K, 3, 33, 768)]
    [InlineData(DType.Q6_K, 1, 45, 512)]
    [InlineData(DType.Q6_K, 6, 17, 1024)]
    [InlineData(DType.Q4_0x8, 1, 48, 128)]
    [InlineData(DType.Q4_0x8, 7, 64, 1088)]   // four-token tiles and a remainder
    [InlineData(DType.Q4_0x8, 13, 64, 1088)]  // an eight-token tile, a four-token one and a remainder
    [InlineData(DType.Q4_Kx8, 1, 40, 512)]
    [InlineData(DType.Q4_Kx8, 9, 24, 1280)]
    [InlineData(DType.Q4_Kx8, 13, 24, 1280)]
    [InlineData(DType.Q5_Kx8, 1, 40, 512)]
    [InlineData(DType.Q5_Kx8, 5, 24, 1280)]
    [InlineData(DType.Q5_Kx8, 13, 24, 1280)]
    [InlineData(DType.Q6_Kx8, 1, 40, 512)]
    [InlineData(DType.Q6_Kx8, 7, 16, 1280)]
    [InlineData(DType.Q8_0x8, 1, 48, 128)]
    [InlineData(DType.Q8_0x8, 6, 16, 1088)]
    [InlineData(DType.Q8_0x8, 13, 16, 1088)]
    [InlineData(DType.Q8_0x8, 9, 512, 64)]
    [InlineData(DType.Q8_0x8, 9, 32, 64)]
    public void MatMul_matches_a_float64_reference_of_the_same_weights(DType type, int tokens, int rows, int columns)
    {
        var random = new SeededRandom(7);
        var weights = new float[rows * columns];
        for (int i = 0; i < weights.Length; i++) weights[i] = 2 * random.NextSingle() - 1;
        var bytes = Encode(weights, type, rows, columns);
        var x = new float[tokens * columns];
        for (int i = 0; i < x.Length; i++) x[i] = 2 * random.NextSingle() - 1;

        var y = new float[tokens * rows];
        using var pool = new WorkerPool(2);
        using var matMul = new MatMul(pool, columns);
        fixed (byte* w = bytes)
        fixed (float* px = x, py = y)
        {
            var tensor = new WeightTensor("w", type, rows, columns, w);
            matMul.Multiply(px, tokens, tensor, py);
            var widened = new float[weights.Length];
            tensor.ReadRows(0, rows, widened);
            // Block dots meet the activations rounded to int8 per 32 values: the reference rounds them by the same rule.
            var activation = BlockDot.IsSupported && (BlockDot.Handles(type) || InterleavedDot.Handles(type)) ? RoundedPerBlock(x) : x.Select(v => (double)v).ToArray();
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < rows; r++)
                {
                    double expected = 0;
                    for (int k = 0; k < columns; k++) expected += activation[t * columns + k] * widened[r * columns + k];
                    Assert.True(Math.Abs(expected - y[t * rows + r]) < 1e-4, $"y[{t}, {r}] = {y[t * rows + r]}, expected {expected}");
                }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    public void Products_of_one_input_by_three_matrices_in_one_pass_equal_three_separate_products(int tokens)
    {
        const int Columns = 512;
        var random = new SeededRandom(9);
        (DType Type, int Rows)[] shapes = [(DType.Q4_Kx8, 64), (DType.Q6_Kx8, 24), (DType.F16, 40)];
        var bytes = shapes.Select(s =>
        {
            var w = new float[s.Rows * Columns];
            for (int i = 0; i < w.Length; i++) w[i] = random.NextSingle() - 0.5f;
            if (s.Type != DType.F16) return Encode(w, s.Type, s.Rows, Columns);
            var half = new Half[w.Length];
            ElementConversion.SingleToHalf(w, half);
            return System.Runtime.InteropServices.MemoryMarshal.AsBytes(half.AsSpan()).ToArray();
        }).ToArray();
        var x = new float[tokens * Columns];
        for (int i = 0; i < x.Length; i++) x[i] = random.NextSingle() - 0.5f;
        var together = shapes.Select(s => new float[tokens * s.Rows]).ToArray();
        var apart = shapes.Select(s => new float[tokens * s.Rows]).ToArray();
        using var pool = new WorkerPool(2);
        using var matMul = new MatMul(pool, Columns);
        fixed (byte* b0 = bytes[0], b1 = bytes[1], b2 = bytes[2])
        fixed (float* px = x, t0 = together[0], t1 = together[1], t2 = together[2], a0 = apart[0], a1 = apart[1], a2 = apart[2])
        {
            var w0 = new WeightTensor("q", shapes[0].Type, shapes[0].Rows, Columns, b0);
            var w1 = new WeightTensor("k", shapes[1].Type, shapes[1].Rows, Columns, b1);
            var w2 = new WeightTensor("v", shapes[2].Type, shapes[2].Rows, Columns, b2);
            matMul.Multiply(px, tokens, w0, t0, w1, t1, w2, t2);
            matMul.Multiply(px, tokens, w0, a0);
            matMul.Multiply(px, tokens, w1, a1);
            matMul.Multiply(px, tokens, w2, a2);
        }
        for (int i = 0; i < shapes.Length; i++) Assert.Equal(apart[i], together[i]);
    }

    /// <summary><paramref name="weights"/> as <paramref name="type"/>; an interleaved layout is made from its file type as a reader makes it.</summary>
    private static byte[] Encode(float[] weights, DType type, int rows, int columns)
    {
        var file = type switch { DType.Q4_0x8 => DType.Q4_0, DType.Q4_Kx8 => DType.Q4_K, DType.Q8_0x8 => DType.Q8_0, DType.Q6_Kx8 => DType.Q6_K, DType.Q5_Kx8 => DType.Q5_K, _ => type };
        var bytes = new byte[file.BytesFor(weights.Length)];
        TensorEncoding.Encode(weights, file, bytes);
        if (file == type) return bytes;
        var interleaved = new byte[type.BytesFor(weights.Length)];
        fixed (byte* source = bytes, destination = interleaved) InterleavedRows.Interleave(file, source, rows, columns, destination);
        return interleaved;
    }

    [Theory]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q4_K)]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q6_K)]
    [InlineData(DType.Q5_K)]
    public void Interleaved_rows_read_back_as_the_rows_they_were_made_from(DType file)
    {
        const int Rows = 16, Columns = 512;
        var random = new SeededRandom(5);
        var weights = new float[Rows * Columns];
        for (int i = 0; i < weights.Length; i++) weights[i] = random.NextSingle() - 0.5f;
        var bytes = new byte[file.BytesFor(weights.Length)];
        TensorEncoding.Encode(weights, file, bytes);
        var expected = new float[weights.Length];
        BlockQuantisation.Dequantise(file, bytes, expected);
        var type = file.Interleaved()!.Value;
        var interleaved = Encode(weights, type, Rows, Columns);
        var actual = new float[weights.Length];
        fixed (byte* p = interleaved) new WeightTensor("w", type, Rows, Columns, p).ReadRows(0, Rows, actual);
        Assert.Equal(expected, actual);
    }

    /// <summary>Each 32 values as int8 levels of max|x|/127, rounded half to even, then read back.</summary>
    private static double[] RoundedPerBlock(float[] x)
    {
        var rounded = new double[x.Length];
        for (int b = 0; b < x.Length; b += 32)
        {
            float max = 0;
            for (int i = b; i < b + 32; i++) max = MathF.Max(max, MathF.Abs(x[i]));
            for (int i = b; i < b + 32; i++) rounded[i] = max == 0 ? 0 : MathF.Round(x[i] * (127 / max)) * (double)(max / 127);
        }
        return rounded;
    }

    [Theory]
    [InlineData(DType.F32, 256)]
    [InlineData(DType.BF16, 256)]
    [InlineData(DType.F16, 256)]
    [InlineData(DType.F16, 1100)] // a second K chunk and a short tail
    [InlineData(DType.Q8_0, 256)]
    [InlineData(DType.Q8_0, 1088)]
    [InlineData(DType.Q4_0, 1088)]
    [InlineData(DType.Q4_K, 1280)]
    [InlineData(DType.Q5_K, 256)]
    [InlineData(DType.Q6_K, 512)]
    [InlineData(DType.Q4_0x8, 1088)]
    [InlineData(DType.Q4_Kx8, 512)]
    [InlineData(DType.Q8_0x8, 256)]
    [InlineData(DType.Q6_Kx8, 768)]
    [InlineData(DType.Q5_Kx8, 512)]
    public void MatMul_gives_each_token_the_same_bits_alone_as_in_a_batch(DType type, int columns)
    {
        int Rows = type.InterleavedRows() == 8 ? 48 : 50; const int Tokens = 11;
        var random = new SeededRandom(3);
        var w = new float[Rows * columns];
        var x = new float[Tokens * columns];
        for (int i = 0; i < w.Length; i++) w[i] = random.NextSingle() - 0.5f;
        for (int i = 0; i < x.Length; i++) x[i] = random.NextSingle() - 0.5f;
        var half = new Half[w.Length];
        var bf16 = new ushort[w.Length];
        var q8 = type.IsBlockQuantised() ? Encode(w, type, Rows, columns) : [];
        ElementConversion.SingleToHalf(w, half);
        ElementConversion.SingleToBF16(w, bf16);
        var batched = new float[Tokens * Rows];
        var alone = new float[Rows];
        using var pool = new WorkerPool(2);
        using var matMul = new MatMul(pool, columns);
        fixed (float* pw = w, px = x, pb = batched, pa = alone)
        fixed (Half* ph = half)
        fixed (ushort* pbf = bf16)
        fixed (byte* pq = q8)
        {
            var tensor = new WeightTensor("w", type, Rows, columns, type switch { DType.F16 => ph, DType.BF16 => pbf, DType.F32 => pw, _ => pq });
            matMul.Multiply(px, Tokens, tensor, pb);
            for (int t = 0; t < Tokens; t++)
            {
                matMul.Multiply(px + t * columns, 1, tensor, pa);
                Assert.Equal(alone, batched.AsSpan(t * Rows, Rows).ToArray());
            }
        }
    }

    [Fact]
    public void An_f16_dot_product_reads_every_finite_half_exactly_in_each_of_its_paths()
    {
        // 59 = 32 (the 512-bit loop) + 16 (its tail) + 8 (the 256-bit loop) + 3 (scalar): a one-hot activation picks
        // one weight through whichever path covers its place, and must give exactly (float)half.
        const int N = 59;
        var finite = Enumerable.Range(0, 65536).Select(i => (ushort)i).Where(b => (b & 0x7C00) != 0x7C00).ToArray();
        var w = new ushort[N];
        var x = new float[N];
        fixed (ushort* pw = w)
        fixed (float* px = x)
            for (int start = 0; start < finite.Length; start += N)
            {
                for (int j = 0; j < N; j++) w[j] = finite[(start + j) % finite.Length];
                for (int j = 0; j < N; j++)
                {
                    x[j] = 1;
                    float expected = (float)BitConverter.UInt16BitsToHalf(w[j]), actual = Dot.F16(px, pw, N);
                    x[j] = 0;
                    if (expected == 0) Assert.Equal(0f, actual); // ±0: the other lanes' +0 products decide the sign
                    else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(actual));
                }
            }
    }

    [Fact]
    public void RmsNorm_softmax_and_SwiGLU_match_their_definitions()
    {
        float[] x = [1, -2, 3, 0.5f, -0.25f];
        float[] weight = [1, 2, 0.5f, 1, 3];
        var normed = new float[5];
        RmsNorm.Apply(x, weight, 1e-5f, normed);
        double rms = Math.Sqrt(x.Sum(v => (double)v * v) / 5 + 1e-5);
        for (int i = 0; i < 5; i++) Assert.Equal(x[i] / rms * weight[i], normed[i], 1e-6);

        var p = (float[])x.Clone();
        Softmax.Apply(p);
        double z = x.Sum(v => Math.Exp(v));
        for (int i = 0; i < 5; i++) Assert.Equal(Math.Exp(x[i]) / z, p[i], 1e-6);

        var gate = (float[])x.Clone();
        SwiGlu.Apply(gate, weight);
        for (int i = 0; i < 5; i++) Assert.Equal(x[i] / (1 + Math.Exp(-x[i])) * weight[i], gate[i], 1e-6);
    }

    [Theory]
    [InlineData(RopeStyle.Interleaved)]
    [InlineData(RopeStyle.RotateHalf)]
    public void RoPE_rotates_the_right_pairs_by_position_times_frequency(RopeStyle style)
    {
        var config = new ModelConfig
        {
            HiddenSize = 8, IntermediateSize = 8, LayerCount = 1, HeadCount = 1, KvHeadCount = 1, HeadDim = 8, VocabSize = 1,
            MaxContextLength = 100, RopeTheta = 10000, RopeStyle = style,
        };
        var rope = new RotaryEmbedding(config);
        float[] v = [1, 2, 3, 4, 5, 6, 7, 8];
        var rotated = (float[])v.Clone();
        var cos = new float[4];
        var sin = new float[4];
        rope.Angles(13, cos, sin);
        rope.Rotate(rotated, 1, cos, sin);
        for (int i = 0; i < 4; i++)
        {
            double angle = 13 * Math.Pow(10000, -2.0 * i / 8);
            var (a, b) = style == RopeStyle.Interleaved ? (2 * i, 2 * i + 1) : (i, i + 4);
            Assert.Equal(v[a] * Math.Cos(angle) - v[b] * Math.Sin(angle), rotated[a], 1e-5);
            Assert.Equal(v[a] * Math.Sin(angle) + v[b] * Math.Cos(angle), rotated[b], 1e-5);
        }
    }

    [Fact]
    public void Llama3_rope_scaling_keeps_high_frequencies_and_divides_low_ones()
    {
        var scaling = new RopeScaling(8, 1, 4, 8192);
        Assert.Equal(1.0, scaling.Apply(1.0));                       // wavelength 2π: far below 8192/4
        Assert.Equal(1e-5 / 8, scaling.Apply(1e-5), 12);             // wavelength 628k: far above 8192
        double mid = 2 * Math.PI / 4096;                             // wavelength 4096: between the bands
        Assert.InRange(scaling.Apply(mid), mid / 8, mid);
    }

    [Fact]
    public void Element_conversions_round_to_nearest_even_and_widen_exactly()
    {
        float[] values = [1f, -2.5f, 3.14159265f, 1e-3f, 65504f, float.NaN];
        var bf16 = new ushort[values.Length];
        ElementConversion.SingleToBF16(values, bf16);
        var back = new float[values.Length];
        ElementConversion.BF16ToSingle(bf16, back);
        for (int i = 0; i < values.Length - 1; i++) Assert.True(Math.Abs(values[i] - back[i]) <= Math.Abs(values[i]) / 256, $"{values[i]} → {back[i]}");
        Assert.True(float.IsNaN(back[^1]));
        Assert.Equal(0x3F81, ElementConversion.SingleToBF16(BitConverter.Int32BitsToSingle(0x3F80_8001)));   // above half: rounds up
        Assert.Equal(0x3F80, ElementConversion.SingleToBF16(BitConverter.Int32BitsToSingle(0x3F80_8000)));   // tie to even

        var many = Enumerable.Range(0, 100).Select(i => (ushort)(i * 611)).ToArray();
        var widened = new float[100];
        ElementConversion.BF16ToSingle(many, widened);
        for (int i = 0; i < 100; i++) Assert.Equal(ElementConversion.BF16ToSingle(many[i]), widened[i]);
    }

    [Fact]
    public void Q8_0_round_trips_within_half_a_step_of_each_block_scale()
    {
        var random = new SeededRandom(1);
        var values = new float[96];
        for (int i = 0; i < values.Length; i++) values[i] = (random.NextSingle() - 0.5f) * 10;
        var blocks = new byte[3 * Q8_0.BlockBytes];
        Q8_0.Quantise(values, blocks);
        var back = new float[96];
        Q8_0.Dequantise(blocks, back);
        for (int b = 0; b < 3; b++)
        {
            float max = values.Skip(b * 32).Take(32).Max(MathF.Abs);
            for (int i = b * 32; i < b * 32 + 32; i++) Assert.InRange(Math.Abs(values[i] - back[i]), 0, max / 127 * 0.51 + 1e-3);
        }
    }
}

public class WorkerPoolTests
{
    private sealed class Sum(int[] data) : KvPacket.Compute.Threading.IParallelWork
    {
        public long Total;
        public void Execute(int start, int end, int worker)
        {
            long local = 0;
            for (int i = start; i < end; i++) local += data[i];
            Interlocked.Add(ref Total, local);
        }
    }

    [Fact]
    public void Concurrent_callers_share_one_pool_and_every_item_runs_exactly_once()
    {
        using var pool = new KvPacket.Compute.Threading.WorkerPool(2);
        var data = Enumerable.Range(1, 10_000).ToArray();
        long expected = data.Sum(x => (long)x);
        Parallel.For(0, 8, _ =>
        {
            for (int r = 0; r < 200; r++)
            {
                var work = new Sum(data);
                pool.Run(work, data.Length);
                Assert.Equal(expected, work.Total);
            }
        });
    }
}
