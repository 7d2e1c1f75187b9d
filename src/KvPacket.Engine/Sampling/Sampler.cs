using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using KvPacket.Core.Numerics;

namespace KvPacket.Engine.Sampling;

/// <summary>
/// Picks tokens from logits: greedy, or temperature with optional top-k and top-p, from a seeded stream so a
/// run is reproducible. Scratch is sized to the vocabulary once; sampling allocates nothing.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly float[] _probabilities;
    private readonly float[] _sortKeys;
    private readonly int[] _order;
    private SeededRandom _random;

    /// <summary>Creates a sampler for a vocabulary of <paramref name="vocabSize"/>.</summary>
    public Sampler(SamplingOptions options, int vocabSize)
    {
        options.Validate();
        _options = options;
        _probabilities = new float[vocabSize];
        _sortKeys = new float[vocabSize];
        _order = new int[vocabSize];
        _random = new SeededRandom(options.Seed);
    }

    /// <summary>Chooses a token from one row of <paramref name="logits"/> (not modified).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_options.Temperature == 0) return TensorPrimitives.IndexOfMax(logits);

        var p = _probabilities.AsSpan(0, logits.Length);
        TensorPrimitives.Divide(logits, _options.Temperature, p);
        TensorPrimitives.SoftMax(p, p);
        float u = _random.NextSingle();
        if (_options.TopK == 0 && _options.TopP >= 1) return Draw(p, u);

        // Sort candidates by probability (descending), cut by top-k then top-p, and draw from what is left.
        var keys = _sortKeys.AsSpan(0, p.Length);
        var order = _order.AsSpan(0, p.Length);
        TensorPrimitives.Negate(p, keys);
        for (int i = 0; i < order.Length; i++) order[i] = i;
        keys.Sort(order);
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, order.Length) : order.Length;
        float mass = 0;
        for (int i = 0; i < keep; i++)
        {
            mass += p[order[i]];
            if (mass >= _options.TopP) { keep = i + 1; break; }
        }
        float target = u * mass, cumulative = 0;
        for (int i = 0; i < keep; i++)
        {
            cumulative += p[order[i]];
            if (target < cumulative) return order[i];
        }
        return order[keep - 1];
    }

    private static int Draw(ReadOnlySpan<float> p, float u)
    {
        float cumulative = 0;
        for (int i = 0; i < p.Length; i++)
        {
            cumulative += p[i];
            if (u < cumulative) return i;
        }
        return p.Length - 1;
    }
}
