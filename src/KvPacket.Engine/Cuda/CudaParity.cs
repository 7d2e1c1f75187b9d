using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Engine.Cuda;

/// <summary>What <see cref="CudaParity.Run"/> measured: the worst logit differences and whether greedy tokens agreed.</summary>
/// <param name="Steps">Decode steps compared.</param>
/// <param name="MaxAbsDifference">Largest |GPU − CPU| logit over the prompt's last position and every step.</param>
/// <param name="MaxRelativeDifference">Largest ‖GPU − CPU‖ / ‖CPU‖ over the same rows.</param>
/// <param name="FirstDivergentStep">The first step whose greedy token differs (−1: none).</param>
/// <param name="UnwrittenLogits">Logits still holding the poison value after a step (must be 0).</param>
/// <param name="Kernels">"specialised (card)" or "generic".</param>
/// <param name="DivergentMargin">At the first divergent step, how far apart the CPU's logits for its token and the GPU's token are (NaN: none).</param>
public sealed record CudaParityResult(int Steps, double MaxAbsDifference, double MaxRelativeDifference, int FirstDivergentStep, int UnwrittenLogits, string Kernels,
    double DivergentMargin)
{
    /// <summary>
    /// True when every greedy token agreed, or the first that did not was a tie: the CPU's two candidates are no further
    /// apart than the measured logit difference can move them (2 × <see cref="MaxAbsDifference"/>), so either is the
    /// greedy token of the same function within its rounding.
    /// </summary>
    public bool GreedyAgrees => FirstDivergentStep < 0 || DivergentMargin <= 2 * MaxAbsDifference;
}


/// <summary>
/// Runs the same prompt and greedy continuation on the CPU transformer and on the GPU, poisoning the GPU logits before
/// every step, and compares every step's logits and token. Used by the CUDA tests and by <c>kvpacket cuda check</c>.
/// </summary>
public static class CudaParity
{
    /// <summary>
    /// Compares <paramref name="steps"/> greedy steps after a <paramref name="promptTokens"/>-token seeded prompt; the CPU
    /// runs <paramref name="reference"/> when given (a quantised model's matrices widened to f32: the arithmetic of the GPU's
    /// quantised products, where the CPU's own block dots round the activations to int8).
    /// </summary>
    public static CudaParityResult Run(Checkpoint model, CudaDevice device, DType weights, DType kv, int promptTokens, int steps, bool specialised, Checkpoint? reference = null)
    {
        int vocab = model.Config.VocabSize;
        var random = new SeededRandom(77);
        int[] prompt = [model.Config.BosTokenId ?? 1, .. random.NextTokens(promptTokens - 1, 0, vocab)];
        using var cpu = new Transformer(reference ?? model, new TransformerOptions { KvType = kv, KvCacheTokens = promptTokens + steps + 16, MaxBatchTokens = 256, SpecialisedKernels = specialised });
        using var gpu = new CudaTransformer(model, device, weights, kv, maxTokens: 256, kvTokens: promptTokens + steps + 16, specialised);
        using var sequence = cpu.CreateSequence();
        var expected = new float[vocab];
        var actual = new float[vocab];
        cpu.Prefill(sequence, prompt, expected);
        gpu.Prefill(prompt);
        double maxAbs = 0, maxRelative = 0;
        int divergent = -1, unwritten = 0;
        double margin = double.NaN;
        Span<int> gpuToken = stackalloc int[1];
        for (int step = 0; step <= steps; step++)
        {
            device.Download<float>(GpuLogits(gpu), actual);
            unwritten += actual.Count(float.IsNaN);
            var (abs, relative) = Compare(actual, expected);
            maxAbs = Math.Max(maxAbs, abs);
            maxRelative = Math.Max(maxRelative, relative);
            if (step == steps) break;
            int cpuToken = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(expected);
            gpu.NextToken(gpuToken);
            if (gpuToken[0] != cpuToken && divergent < 0) (divergent, margin) = (step, expected[cpuToken] - expected[gpuToken[0]]);
            // Both continue with the CPU's token, so later steps still compare the same context.
            device.Fill(GpuLogits(gpu), 0x7fc00000); // NaN: any logit the next step fails to write shows up
            gpu.Step([cpuToken]);
            cpu.Prefill(sequence, [cpuToken], expected);
        }
        return new CudaParityResult(steps, maxAbs, maxRelative, divergent, unwritten, gpu.Spec is null ? "generic" : $"specialised ({gpu.Spec.Name})", margin);
    }

    /// <summary>
    /// <paramref name="model"/> with its block-quantised matrices widened to f32, written to <paramref name="path"/> (a GGUF)
    /// and loaded from it — the CPU reference for a quantised model on the GPU — or null when it has none.
    /// </summary>
    public static Checkpoint? DequantisedReference(Checkpoint model, string path)
    {
        if (!model.Matrices.Any(w => w.IsPresent && w.Type.IsBlockQuantised())) return null;
        Core.Checkpoints.CheckpointExporter.WriteGguf(model, path, DType.F32);
        return Core.Checkpoints.CheckpointLoader.Load(path);
    }

    /// <summary>
    /// <paramref name="count"/> sequences with different prompts decoded together in one batch for <paramref name="steps"/>
    /// steps against the same sequences decoded alone: the largest logit difference, absolute and relative per row (cuBLAS
    /// may pick other kernels for other batch sizes, and a long prompt takes the tiled prefill kernel where the batch takes
    /// the split one).
    /// </summary>
    public static (double MaxAbs, double MaxRelative) BatchConsistency(Checkpoint model, CudaDevice device, DType weights, DType kv, int steps, int count = 3)
    {
        int vocab = model.Config.VocabSize;
        var random = new SeededRandom(91);
        int[][] prompts = [.. Enumerable.Range(0, count).Select(i => (int[])[1, .. random.NextTokens(9 + 7 * (i % 3), 0, vocab)])];
        int promptTokens = prompts.Sum(p => p.Length);
        using var gpu = new CudaTransformer(model, device, weights, kv, maxTokens: Math.Max(64, promptTokens), kvTokens: (count + 1) * (64 + steps + 16),
            maxSequences: count + 1);
        var alone = new float[count][];
        var tokens = new int[count][];
        Span<int> next = stackalloc int[1];
        for (int s = 0; s < count; s++)
        {
            int id = gpu.CreateSequence();
            gpu.Step([id], [prompts[s].Length], prompts[s]);
            tokens[s] = new int[steps];
            var rows = new float[steps * vocab];
            for (int i = 0; i < steps; i++)
            {
                device.Download<float>(gpu.LogitsBuffer, rows.AsSpan(i * vocab, vocab));
                gpu.NextToken(next);
                tokens[s][i] = next[0];
                gpu.Step([id], [1], next);
            }
            alone[s] = rows;
            gpu.ReleaseSequence(id);
        }
        int[] ids = [.. Enumerable.Range(0, count).Select(_ => gpu.CreateSequence())];
        gpu.Step(ids, [.. prompts.Select(p => p.Length)], [.. prompts.SelectMany(p => p)]);
        var batch = new float[count * vocab];
        var ones = Enumerable.Repeat(1, count).ToArray();
        double worst = 0, worstRelative = 0;
        for (int i = 0; i < steps; i++)
        {
            device.Download<float>(gpu.LogitsBuffer, batch);
            for (int s = 0; s < count; s++)
            {
                var (abs, relative) = Compare(batch.AsSpan(s * vocab, vocab), alone[s].AsSpan(i * vocab, vocab));
                worst = Math.Max(worst, abs);
                worstRelative = Math.Max(worstRelative, relative);
            }
            int step = i;
            gpu.Step(ids, ones, [.. Enumerable.Range(0, count).Select(s => tokens[s][step])]);
        }
        return (worst, worstRelative);
    }

    /// <summary>
    /// Greedy decoding of three prompts stepping together, driven through <see cref="IForwardBackend"/> on the CPU and on the
    /// GPU with the same code: the first step at which any sequence's token differs (−1 when none does); the CPU runs
    /// <paramref name="reference"/> when given, as in <see cref="Run"/>.
    /// </summary>
    public static int BackendAgreement(Checkpoint model, CudaDevice device, DType weights, DType kv, int steps, Checkpoint? reference = null)
    {
        using var transformer = new Transformer(reference ?? model, new TransformerOptions { KvType = kv, KvCacheTokens = 4 * (64 + steps), MaxBatchTokens = 64 });
        using var gpu = new CudaTransformer(model, device, weights, kv, maxTokens: 64, kvTokens: 4 * (64 + steps), maxSequences: 4);
        var random = new SeededRandom(7);
        int[][] prompts = [.. Enumerable.Range(0, 3).Select(i => (int[])[1, .. random.NextTokens(5 + 8 * i, 0, model.Config.VocabSize)])];
        var expected = GreedyDecoding.Run(transformer, prompts, steps, out _);
        var actual = GreedyDecoding.Run(gpu, prompts, steps, out _);
        for (int step = 0; step < steps; step++)
            for (int s = 0; s < prompts.Length; s++)
                if (expected[s][step] != actual[s][step]) return step;
        return -1;
    }

    /// <summary>
    /// A quantised model's prompts of <paramref name="lengths"/> tokens prefilled with the tensor-core products over quantised
    /// tiles and again through cuBLAS on dequantised slices (the same bf16 roundings, summed in another order): the largest
    /// relative difference of the last token's logits.
    /// </summary>
    public static double QuantisedTensorCoreAgreement(Checkpoint model, CudaDevice device, DType kv, params int[] lengths)
    {
        int vocab = model.Config.VocabSize, longest = lengths.Max();
        using var gpu = new CudaTransformer(model, device, DType.BF16, kv, maxTokens: longest, kvTokens: longest + 16);
        var random = new SeededRandom(31);
        int[] prompt = [model.Config.BosTokenId ?? 1, .. random.NextTokens(longest - 1, 0, vocab)];
        var tensorCores = new float[vocab];
        var dequantised = new float[vocab];
        double worst = 0;
        foreach (int length in lengths)
        {
            gpu.QuantisedTensorCoreTokens = length;
            gpu.Reset();
            gpu.Prefill(prompt.AsSpan(0, length), tensorCores);
            gpu.QuantisedTensorCoreTokens = 0;
            gpu.Reset();
            gpu.Prefill(prompt.AsSpan(0, length), dequantised);
            worst = Math.Max(worst, Compare(tensorCores, dequantised).Relative);
        }
        return worst;
    }

    /// <summary>Largest |actual − expected| of one row of logits, and ‖actual − expected‖ / ‖expected‖.</summary>
    private static (double MaxAbs, double Relative) Compare(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        double maxAbs = 0, difference = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs((double)actual[i] - expected[i]);
            maxAbs = Math.Max(maxAbs, d);
            difference += d * d;
            norm += (double)expected[i] * expected[i];
        }
        return (maxAbs, Math.Sqrt(difference / Math.Max(norm, 1e-30)));
    }

    private static DeviceBuffer GpuLogits(CudaTransformer gpu) => gpu.LogitsBuffer;
}
