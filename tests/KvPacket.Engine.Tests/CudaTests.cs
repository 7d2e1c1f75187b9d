using KvPacket.Compute.Cuda;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
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
}
