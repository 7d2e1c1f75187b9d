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

/// <summary>One RAG mode on both backends (<see cref="CudaParity.RagModes"/>).</summary>
/// <param name="Mode">The mode.</param>
/// <param name="MaxAbsDifference">Largest |GPU − CPU| logit over every query row and the greedy continuation (NaN: not run on the GPU).</param>
/// <param name="MaxRelativeDifference">‖GPU − CPU‖ / ‖CPU‖ over the same logits.</param>
/// <param name="GreedySame">Whether the GPU's greedy choice at every step (both fed the CPU's tokens) was the CPU's.</param>
/// <param name="BlocksReturned">Whether every GPU KV block was free again afterwards.</param>
/// <param name="Refused">Why the GPU refused the mode (null: it ran).</param>
public sealed record RagModeParity(RagMode Mode, double MaxAbsDifference, double MaxRelativeDifference, bool GreedySame, bool BlocksReturned, string? Refused);

/// <summary>
/// Runs the same prompt and greedy continuation on the CPU transformer and on the GPU, poisoning the GPU logits before
/// every step, and compares every step's logits and token. Used by the CUDA tests and by <c>kvpacket cuda check</c>.
/// </summary>
public static class CudaParity
{
    /// <summary>Compares <paramref name="steps"/> greedy steps after a <paramref name="promptTokens"/>-token seeded prompt.</summary>
    public static CudaParityResult Run(Checkpoint model, CudaDevice device, DType weights, DType kv, int promptTokens, int steps, bool specialised)
    {
        int vocab = model.Config.VocabSize;
        var random = new SeededRandom(77);
        int[] prompt = [model.Config.BosTokenId ?? 1, .. random.NextTokens(promptTokens - 1, 0, vocab)];
        using var cpu = new Transformer(model, new TransformerOptions { KvType = kv, KvCacheTokens = promptTokens + steps + 16, MaxBatchTokens = 256, SpecialisedKernels = specialised });
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
            double norm = 0, difference = 0;
            for (int i = 0; i < vocab; i++)
            {
                double d = Math.Abs((double)actual[i] - expected[i]);
                maxAbs = Math.Max(maxAbs, d);
                difference += d * d;
                norm += (double)expected[i] * expected[i];
            }
            maxRelative = Math.Max(maxRelative, Math.Sqrt(difference / Math.Max(norm, 1e-30)));
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
                double difference = 0, norm = 0;
                for (int v = 0; v < vocab; v++)
                {
                    double d = Math.Abs((double)batch[s * vocab + v] - alone[s][i * vocab + v]);
                    worst = Math.Max(worst, d);
                    difference += d * d;
                    norm += (double)alone[s][i * vocab + v] * alone[s][i * vocab + v];
                }
                worstRelative = Math.Max(worstRelative, Math.Sqrt(difference / Math.Max(norm, 1e-30)));
            }
            int step = i;
            gpu.Step(ids, ones, [.. Enumerable.Range(0, count).Select(s => tokens[s][step])]);
        }
        return (worst, worstRelative);
    }

    /// <summary>
    /// Greedy decoding of three prompts stepping together, driven through <see cref="IForwardBackend"/> on the CPU and on the
    /// GPU with the same code: the first step at which any sequence's token differs (−1 when none does).
    /// </summary>
    public static int BackendAgreement(Checkpoint model, CudaDevice device, DType weights, DType kv, int steps)
    {
        using var transformer = new Transformer(model, new TransformerOptions { KvType = kv, KvCacheTokens = 4 * (64 + steps), MaxBatchTokens = 64 });
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
    /// One request in every RAG mode through <see cref="RagEngine"/> on the CPU and on the GPU — packets built on each
    /// backend, EPIC's partial first blocks, KV Packet's header and trailer and KVLink's links as soft tokens, CacheBlend
    /// recomputing half of each document (past 16 tokens: the scattered tensor-core tiles where they apply) — comparing
    /// every query row's logits and a greedy continuation, and checking that the GPU cache has every block back once the
    /// requests and packets are gone. A mode the GPU refuses is reported with the reason.
    /// </summary>
    public static IReadOnlyList<RagModeParity> RagModes(Checkpoint model, CudaDevice device, DType weights, DType kv, int steps = 8)
    {
        var c = model.Config;
        var random = new SeededRandom(31);
        // Documents whose lengths are not whole blocks, so packet placements leave partial blocks and EPIC skips into one.
        var request = new RagRequest([c.BosTokenId ?? 1], [.. Enumerable.Range(0, 4).Select(d => random.NextTokens(21 + 13 * d, 3, c.VocabSize))],
            random.NextTokens(40, 3, c.VocabSize));   // past the tiled kernel's 16, few tiles, a longer context: the split kernel
        // Soft tokens of the scale of real input embeddings: rows of the embedding table.
        float[] Rows(int count)
        {
            var rows = new float[count * c.HiddenSize];
            int[] ids = random.NextTokens(count, 3, c.VocabSize);
            for (int i = 0; i < count; i++) model.TokenEmbedding.ReadRow(ids[i], rows.AsSpan(i * c.HiddenSize, c.HiddenSize));
            return rows;
        }
        var adapter = new Adapter("parity", 1, Rows(2), Rows(3), Rows(2));
        int kvTokens = 4096;
        using var cpu = new Transformer(model, new TransformerOptions { KvType = kv, KvCacheTokens = kvTokens, MaxBatchTokens = 128 });
        using var gpu = new CudaTransformer(model, device, weights, kv, maxTokens: 128, kvTokens: kvTokens, maxSequences: 16);
        var results = new List<RagModeParity>();
        foreach (var mode in Enum.GetValues<RagMode>())
        {
            using var cpuEngine = new RagEngine(cpu) { Adapter = adapter, EpicRecomputeTokens = 5, CacheBlendFraction = 0.5, QueryLogits = LogitsFor.AllTokens };
            var expected = Answer(cpuEngine, request, mode, new int[steps], forced: false);
            (float[] Logits, int[] Tokens, int[] Greedy) actual = default;
            string? refused = null;
            using (var gpuEngine = new RagEngine(gpu) { Adapter = adapter, EpicRecomputeTokens = 5, CacheBlendFraction = 0.5, QueryLogits = LogitsFor.AllTokens })
            {
                try { actual = Answer(gpuEngine, request, mode, (int[])expected.Tokens.Clone(), forced: true); }
                catch (NotSupportedException e) { refused = e.Message; }
            }
            bool blocksBack = gpu.KvBlocks.FreeBlockCount == gpu.KvBlocks.BlockCount;
            if (refused is not null)
            {
                results.Add(new RagModeParity(mode, double.NaN, double.NaN, false, blocksBack, refused));
                continue;
            }
            double maxAbs = 0, difference = 0, norm = 0;
            for (int i = 0; i < expected.Logits.Length; i++)
            {
                double d = Math.Abs((double)actual.Logits![i] - expected.Logits[i]);
                maxAbs = Math.Max(maxAbs, d);
                difference += d * d;
                norm += (double)expected.Logits[i] * expected.Logits[i];
            }
            results.Add(new RagModeParity(mode, maxAbs, Math.Sqrt(difference / Math.Max(norm, 1e-30)), expected.Tokens.SequenceEqual(actual.Greedy), blocksBack, null));
        }
        return results;
    }

    /// <summary>
    /// The request's query logits in <paramref name="mode"/> followed by the logits along a continuation of
    /// <paramref name="tokens"/>.Length tokens: its own greedy tokens (written into <paramref name="tokens"/>), or with
    /// <paramref name="forced"/> the given ones, so a second backend is compared on the same context even where a near-tie
    /// makes its own choice differ. Also returns the backend's own greedy choice at every step.
    /// </summary>
    private static (float[] Logits, int[] Tokens, int[] Greedy) Answer(RagEngine engine, RagRequest request, RagMode mode, int[] tokens, bool forced)
    {
        var result = engine.Prefill(request, mode);
        using var sequence = result.Sequence;
        int vocab = sequence.Backend.Config.VocabSize, steps = tokens.Length;
        var logits = new float[result.QueryLogits.Length + steps * vocab];
        result.QueryLogits.CopyTo(logits, 0);
        var greedy = new int[steps];
        for (int i = 0; i < steps; i++)
        {
            greedy[i] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(logits.AsSpan(result.QueryLogits.Length + (i - 1) * vocab, vocab));
            if (!forced) tokens[i] = greedy[i];
            sequence.Prefill(tokens.AsSpan(i, 1), logits.AsSpan(result.QueryLogits.Length + i * vocab, vocab));
        }
        return (logits, tokens, greedy);
    }

    private static DeviceBuffer GpuLogits(CudaTransformer gpu) => gpu.LogitsBuffer;
}
