using KvPacket.Compute.Cuda;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Rag;
using Xunit;

namespace KvPacket.Tests;

/// <summary>
/// CUDA against the CPU on stories260K. CI has no GPU, so these skip there; <c>benchmarks/gpu/run.sh</c> runs the same
/// <see cref="CudaParity"/> checks on a GPU machine through <c>kvpacket cuda check</c>.
/// </summary>
public class CudaTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    [CudaFact]
    public void F32_logits_agree_within_1e3_and_128_greedy_tokens_agree_up_to_ties_with_card_and_generic_kernels()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var device = CudaDevice.Open();
        foreach (bool specialised in new[] { true, false })
        {
            var result = CudaParity.Run(checkpoint, device, DType.F32, DType.F32, promptTokens: 32, steps: 128, specialised);
            Assert.True(result.MaxAbsDifference <= 1e-3, $"{result.Kernels}: {result.MaxAbsDifference}");
            Assert.True(result.GreedyAgrees, $"{result.Kernels}: greedy differs at step {result.FirstDivergentStep}, CPU margin {result.DivergentMargin}");
            Assert.Equal(0, result.UnwrittenLogits);
        }
    }

    [CudaFact]
    public void Every_rag_mode_on_the_gpu_matches_the_cpu_within_1e3_and_returns_every_block()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var device = CudaDevice.Open();
        using var gpu = new CudaTransformer(checkpoint, device, DType.F32, DType.F32, maxTokens: 128, kvTokens: 4096, maxSequences: 16);
        var results = RagModeParity.Measure(checkpoint, gpu, DType.F32);
        foreach (var r in results)
        {
            Assert.True(r.MaxAbsDifference <= 1e-3, $"{r.Label}: {r.MaxAbsDifference}");
            Assert.True(r.GreedySame, $"{r.Label}: greedy continuation differs");
        }
        Assert.All(results, r => Assert.True(r.BlocksReturned, $"{r.Label}: GPU blocks still held"));
        Assert.All(results, r => Assert.True(r.Refused is null, $"{r.Label}: {r.Refused}"));
    }

    [CudaFact]
    public void Bf16_weights_with_an_f16_cache_agree_within_2e2_relative()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var device = CudaDevice.Open();
        var result = CudaParity.Run(checkpoint, device, DType.BF16, DType.F16, promptTokens: 32, steps: 32, specialised: true);
        Assert.True(result.MaxRelativeDifference <= 2e-2, $"{result.MaxRelativeDifference}");
        Assert.Equal(0, result.UnwrittenLogits);
    }

    /// <summary>
    /// The CPU reference for a quantised model on the GPU: every block-quantised matrix widened to f32, row for row the
    /// values the blocks hold (and none for a model without quantised matrices).
    /// </summary>
    [Fact]
    public void The_dequantised_reference_holds_the_quantised_matrices_values_in_f32()
    {
        using var temp = Fixtures.TempDirectory();
        using var original = ReferenceModels.BlockWideModel(temp.Path);
        Assert.Null(CudaParity.DequantisedReference(original, Path.Combine(temp.Path, "none.gguf")));
        using var quantised = ReferenceModels.WriteGguf(original, temp.Path, DType.Q4_K);
        using var reference = CudaParity.DequantisedReference(quantised, Path.Combine(temp.Path, "reference.gguf"));
        Assert.NotNull(reference);
        foreach (var (q, f) in new[] { (quantised.Layers[1].Down, reference.Layers[1].Down), (quantised.Layers[0].Query, reference.Layers[0].Query), (quantised.Classifier, reference.Classifier) })
        {
            Assert.Equal(DType.Q4_Kx8, q.Type);
            Assert.Equal(DType.F32, f.Type);
            var expected = new float[q.Rows * q.Columns];
            var actual = new float[q.Rows * q.Columns];
            q.ReadRows(0, q.Rows, expected);
            f.ReadRows(0, f.Rows, actual);
            Assert.Equal(expected, actual);
            Assert.NotEqual(0f, expected.Max(MathF.Abs));
        }
    }

    /// <summary>
    /// A 256-wide model written in each block format keeps its matrices quantised on the GPU, and the products over the
    /// blocks give the logits of the same matrices dequantised to f32 on the CPU: f32 operands and KV, within 1e-3 (measured
    /// 5e-6 on llama-50m's shape, <c>benchmarks/results/cuda-quantised-check-h200.txt</c>), every greedy token alike.
    /// </summary>
    [CudaFact]
    public void Block_quantised_matrices_on_the_gpu_match_their_f32_dequantisation_within_1e3() =>
        InEachBlockFormat((type, quantised, device, directory) =>
        {
            using var reference = CudaParity.DequantisedReference(quantised, Path.Combine(directory, $"{type}-f32.gguf"));
            var result = CudaParity.Run(quantised, device, DType.F32, DType.F32, promptTokens: 40, steps: 16, specialised: false, reference);
            Assert.True(result.MaxAbsDifference <= 1e-3, $"{type}: {result.MaxAbsDifference}");
            Assert.Equal(-1, result.FirstDivergentStep);
            Assert.Equal(0, result.UnwrittenLogits);
        });

    /// <summary>
    /// With bf16 operands, steps of 9–128 tokens multiply the blocks on the tensor cores: prompts of one token tile and
    /// several (partial tiles, column splits) give the logits of the cuBLAS path over dequantised slices — the same bf16
    /// roundings summed in another order — within 2e-2 relative (measured 6.2–7.2e-3 on llama-50m's shape,
    /// <c>benchmarks/results/cuda-quantised-tensor-cores-check-h200.txt</c>).
    /// </summary>
    [CudaFact]
    public void Quantised_products_on_the_tensor_cores_match_the_dequantised_cublas_path_within_2e2_relative() =>
        InEachBlockFormat((type, quantised, device, _) =>
        {
            double relative = CudaParity.QuantisedTensorCoreAgreement(quantised, device, DType.F16, 9, 40, 65, 128);
            Assert.True(relative <= 2e-2, $"{type}: {relative}");
        });

    /// <summary>
    /// <paramref name="check"/>(type, model, device, directory) for the 256-wide reference model written as a GGUF in each
    /// block format, in a temporary directory, with the GPU open.
    /// </summary>
    private static void InEachBlockFormat(Action<DType, Checkpoint, CudaDevice, string> check)
    {
        using var temp = Fixtures.TempDirectory();
        using var original = ReferenceModels.BlockWideModel(temp.Path);
        using var device = CudaDevice.Open();
        foreach (var type in new[] { DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K })
        {
            using var quantised = ReferenceModels.WriteGguf(original, temp.Path, type);
            check(type, quantised, device, temp.Path);
        }
    }
}
