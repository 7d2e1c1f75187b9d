using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Rag;

/// <summary>One mode's averages over an evaluation set.</summary>
/// <param name="Mode">The mode.</param>
/// <param name="MeanKl">Mean KL(full ‖ mode) of the next-token distributions over every continuation position.</param>
/// <param name="TopOneAgreement">Fraction of continuation positions where the mode's argmax equals full's.</param>
/// <param name="MeanTtftSeconds">Mean time to the first token.</param>
/// <param name="MeanDocumentFlops">Mean FLOPs spent on documents at query time.</param>
/// <param name="MeanPacketKvBytes">Mean packet KV bytes used.</param>
/// <param name="Variant">How the packets were prepared, when not plain (e.g. "int8 pages", "pruned 50%").</param>
public sealed record ModeScore(RagMode Mode, double MeanKl, double TopOneAgreement, double MeanTtftSeconds, double MeanDocumentFlops, double MeanPacketKvBytes,
    string Variant = "")
{
    /// <summary>The mode, with the variant when there is one.</summary>
    public string Label => Variant.Length == 0 ? Mode.ToString().ToLowerInvariant() : $"{Mode.ToString().ToLowerInvariant()} ({Variant})";
}

/// <summary>
/// Compares every mode with full recompute on the same requests: after each mode's prefill, the same continuation
/// (full context's greedy tokens) is fed teacher-forced, and the next-token distributions at every continuation position
/// are compared with full's by KL and top-1 agreement.
/// </summary>
public static class ModeEvaluation
{
    /// <summary>Scores <paramref name="modes"/> on <paramref name="requests"/> with <paramref name="continuation"/> tokens each,
    /// labelling them with <paramref name="variant"/> (how the engine's packets were prepared).</summary>
    public static IReadOnlyList<ModeScore> Run(IForwardBackend model, RagEngine engine, IReadOnlyList<RagRequest> requests, IReadOnlyList<RagMode> modes, int continuation,
        string variant = "")
    {
        int vocab = model.Config.VocabSize;
        var sums = modes.ToDictionary(m => m, _ => new double[5]); // kl, agree, ttft, flops, bytes
        int positions = 0;
        foreach (var request in requests)
        {
            // Full context: its greedy continuation and the distributions along it.
            var (tokens, fullLogits) = GreedyContinuation(model, engine, request, continuation);
            positions += tokens.Length;
            foreach (var mode in modes)
            {
                var (logits, result) = TeacherForced(model, engine, request, mode, tokens);
                var s = sums[mode];
                for (int p = 0; p < tokens.Length; p++)
                {
                    var full = fullLogits.AsSpan(p * vocab, vocab);
                    var other = logits.AsSpan(p * vocab, vocab);
                    s[0] += Kl(full, other);
                    s[1] += ArgMax(full) == ArgMax(other) ? 1 : 0;
                }
                s[2] += result.TimeToFirstTokenSeconds;
                s[3] += result.DocumentFlops;
                s[4] += result.PacketKvBytes;
            }
        }
        return modes.Select(m => new ModeScore(m, sums[m][0] / positions, sums[m][1] / positions, sums[m][2] / requests.Count,
            sums[m][3] / requests.Count, sums[m][4] / requests.Count, variant)).ToArray();
    }

    /// <summary>Full context's greedy continuation of <paramref name="request"/> (<paramref name="count"/> tokens) and the logits before each of its tokens.</summary>
    public static (int[] Tokens, float[] Logits) GreedyContinuation(IForwardBackend model, RagEngine engine, RagRequest request, int count)
    {
        int vocab = model.Config.VocabSize;
        var result = engine.Prefill(request, RagMode.Full);
        using var sequence = result.Sequence;
        count = Math.Min(count, sequence.MaxLength - sequence.Length + 1);
        var tokens = new int[count];
        var logits = new float[count * vocab];
        result.QueryLogits.AsSpan(result.QueryLogits.Length - vocab).CopyTo(logits);
        for (int i = 0; i < count; i++)
        {
            tokens[i] = ArgMax(logits.AsSpan(i * vocab, vocab));
            if (i + 1 < count) sequence.Prefill(tokens.AsSpan(i, 1), logits.AsSpan((i + 1) * vocab, vocab));
        }
        return (tokens, logits);
    }

    /// <summary>The logits before each of <paramref name="forced"/>'s tokens after prefilling in <paramref name="mode"/>.</summary>
    private static (float[] Logits, RagResult Result) TeacherForced(IForwardBackend model, RagEngine engine, RagRequest request, RagMode mode, int[] forced)
    {
        int vocab = model.Config.VocabSize;
        var result = engine.Prefill(request, mode);
        using var sequence = result.Sequence;
        var logits = new float[forced.Length * vocab];
        result.QueryLogits.AsSpan(result.QueryLogits.Length - vocab).CopyTo(logits);
        // The rest of the continuation teacher-forced: the logits after each forced token.
        sequence.Prefill(forced.AsSpan(0, forced.Length - 1), logits.AsSpan(vocab), LogitsFor.AllTokens);
        return (logits, result);
    }

    private static int ArgMax(ReadOnlySpan<float> values) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax(values);

    /// <summary>KL(p ‖ q) of the softmax distributions of two logit rows, in nats.</summary>
    public static double Kl(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double maxP = double.NegativeInfinity, maxQ = double.NegativeInfinity;
        for (int i = 0; i < p.Length; i++) { maxP = Math.Max(maxP, p[i]); maxQ = Math.Max(maxQ, q[i]); }
        double zP = 0, zQ = 0;
        for (int i = 0; i < p.Length; i++) { zP += Math.Exp(p[i] - maxP); zQ += Math.Exp(q[i] - maxQ); }
        double logZP = maxP + Math.Log(zP), logZQ = maxQ + Math.Log(zQ), kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double logP = p[i] - logZP, logQ = q[i] - logZQ;
            kl += Math.Exp(logP) * (logP - logQ);
        }
        return Math.Max(0, kl);
    }
}
