using ILGPU;
using ILGPU.Runtime.CPU;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Ilgpu;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;
using Xunit;

namespace KvPacket.Tests;

/// <summary>
/// The ILGPU backend's kernels on ILGPU's CPU accelerator (the same C# kernels a CUDA accelerator compiles) against the
/// SIMD CPU backend, through the backend contract.
/// </summary>
public sealed class IlgpuBackendTests : IDisposable
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");
    private readonly Context _context = Context.Create(builder => builder.CPU());
    private readonly CPUAccelerator _accelerator;

    public IlgpuBackendTests() => _accelerator = _context.CreateCPUAccelerator(0);

    public void Dispose()
    {
        _accelerator.Dispose();
        _context.Dispose();
    }

    [Fact]
    public void Stories260K_logits_of_every_prompt_token_and_greedy_continuations_match_the_simd_backend()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var ilgpu = new IlgpuTransformer(checkpoint, _accelerator, maxTokens: 64, kvTokens: 2048);
        AssertMatchesSimd(checkpoint, ilgpu, [1, .. ReferenceModels.RandomTokens(23, 5)],
            [[1, .. ReferenceModels.RandomTokens(6, 1)], [1, .. ReferenceModels.RandomTokens(19, 2)], [1, .. ReferenceModels.RandomTokens(11, 3)]], 16);
        Assert.Equal(ilgpu.KvBlocks.BlockCount, ilgpu.KvBlocks.FreeBlockCount);
    }

    [Fact]
    public void The_gpus_kernels_on_emulated_warps_match_the_simd_backend()
    {
        // The kernels a CUDA accelerator runs for steps under 16 tokens — warps, the norms folded into the products, K/V
        // appended by the q/k/v product — on ILGPU's CPU accelerator in its Intel-like kind: 16-lane warps, the narrowest
        // whose lanes cover a KV block's keys (emulated warps are slow: short prompts; longer steps' tiles are checked per kernel).
        using var context = Context.Create(builder => builder.CPU(CPUDeviceKind.Intel));
        using var accelerator = context.CreateCPUAccelerator(0);
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var ilgpu = new IlgpuTransformer(checkpoint, accelerator, maxTokens: 64, kvTokens: 1024, warps: true);
        AssertMatchesSimd(checkpoint, ilgpu, [1, .. ReferenceModels.RandomTokens(5, 9)],
            [[1, .. ReferenceModels.RandomTokens(4, 11)], [1, .. ReferenceModels.RandomTokens(6, 12)]], 3);
    }

    /// <summary>
    /// The logits of every token of <paramref name="prompt"/> within 1e-4 of the SIMD backend's, and greedy continuations
    /// of <paramref name="prompts"/> (batched) equal to its for <paramref name="steps"/> steps; the sequences released.
    /// </summary>
    private static void AssertMatchesSimd(Checkpoint checkpoint, IlgpuTransformer ilgpu, int[] prompt, int[][] prompts, int steps)
    {
        using var cpu = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 64 });
        int vocab = checkpoint.Config.VocabSize;
        var expected = new float[prompt.Length * vocab];
        var actual = new float[prompt.Length * vocab];
        using (var sequence = new BackendSequence(cpu, ((IForwardBackend)cpu).CreateSequence())) sequence.Prefill(prompt, expected, LogitsFor.AllTokens);
        using (var sequence = new BackendSequence(ilgpu, ilgpu.CreateSequence())) sequence.Prefill(prompt, actual, LogitsFor.AllTokens);
        double worst = 0;
        for (int i = 0; i < expected.Length; i++) worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
        Assert.True(worst <= 1e-4, $"max |Δlogit| {worst:E2}");
        var cpuTokens = GreedyDecoding.Run(cpu, prompts, steps, out int[] cpuIds);
        var ilgpuTokens = GreedyDecoding.Run(ilgpu, prompts, steps, out int[] ilgpuIds);
        for (int s = 0; s < prompts.Length; s++) Assert.Equal(cpuTokens[s], ilgpuTokens[s]);
        foreach (int id in cpuIds) ((IForwardBackend)cpu).ReleaseSequence(id);
        foreach (int id in ilgpuIds) ilgpu.ReleaseSequence(id);
    }

    [Fact]
    public void The_cards_kernels_give_the_generic_kernels_logits_bit_for_bit()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var card = new IlgpuTransformer(checkpoint, _accelerator, maxTokens: 64, kvTokens: 1024);
        using var generic = new IlgpuTransformer(checkpoint, _accelerator, maxTokens: 64, kvTokens: 1024, specialised: false);
        Assert.Equal("stories260k", card.Kernels);
        Assert.Equal("generic", generic.Kernels);
        int[] prompt = [1, .. ReferenceModels.RandomTokens(30, 8)];
        var expected = new float[prompt.Length * checkpoint.Config.VocabSize];
        var actual = new float[expected.Length];
        using (var sequence = new BackendSequence(generic, generic.CreateSequence())) sequence.Prefill(prompt, expected, LogitsFor.AllTokens);
        using (var sequence = new BackendSequence(card, card.CreateSequence())) sequence.Prefill(prompt, actual, LogitsFor.AllTokens);
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void Every_rag_mode_but_cacheblend_matches_the_simd_backend_and_returns_every_block()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var ilgpu = new IlgpuTransformer(checkpoint, _accelerator, maxTokens: 128, kvTokens: 4096, maxSequences: 16);
        foreach (var r in RagModeParity.Measure(checkpoint, ilgpu, DType.F32))
        {
            Assert.True(r.BlocksReturned, $"{r.Label}: blocks still held");
            if (r.Mode == RagMode.CacheBlend)
            {
                Assert.Contains("CacheBlend", r.Refused);
                continue;
            }
            Assert.True(r.Refused is null, $"{r.Label}: {r.Refused}");
            // f32 in both, summed in different orders over ~150 positions: the repository's f32 parity limit (1e-3 absolute,
            // issue 4's) and a relative one that a wrong rotation or mask would break by orders of magnitude.
            Assert.True(r.MaxAbsDifference <= 1e-3 && r.MaxRelativeDifference <= 1e-5, $"{r.Label}: max |Δlogit| {r.MaxAbsDifference:E2}, relative {r.MaxRelativeDifference:E2}");
            Assert.True(r.GreedySame, $"{r.Label}: greedy continuation differs");
        }
    }

    [Fact]
    public async Task The_serving_engine_on_it_gives_16_requests_in_every_mode_their_solo_tokens_together_and_preempted()
    {
        var result = await ServingConsistency.RunAsync(() => CheckpointLoader.Load(Stories),
            (model, kvTokens) => new IlgpuTransformer(model, _accelerator, maxTokens: 64, kvTokens: kvTokens, maxSequences: 32), requests: 16);
        Assert.True(result.Passed, result.ToString());
    }

    [Fact]
    public void CacheBlend_and_pruned_packets_are_refused_by_name()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var ilgpu = new IlgpuTransformer(checkpoint, _accelerator, maxTokens: 32, kvTokens: 512);
        using var packet = ilgpu.BuildPacket([5, 6, 7, 8]);
        int id = ilgpu.CreateSequence();
        Assert.Contains("CacheBlend", Assert.Throws<NotSupportedException>(() => ilgpu.PlacePacketCopy(id, packet)).Message);
        Assert.Contains("pruned", Assert.Throws<NotSupportedException>(() => ilgpu.BuildPacket([5, 6, 7, 8], keep: 0.5)).Message);
        ilgpu.ReleaseSequence(id);
    }
}
