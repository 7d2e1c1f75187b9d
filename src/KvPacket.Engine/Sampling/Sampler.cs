using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using KvPacket.Core.Numerics;

namespace KvPacket.Engine.Sampling;

/// <summary>
/// Picks tokens from logits: greedy, or temperature with optional top-k and top-p, from a seeded stream so a
/// run is reproducible; logit bias and frequency / presence penalties (over the tokens this sampler chose before)
/// adjust a copy of the logits first. Scratch is sized to the vocabulary once; sampling allocates nothing.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly float[] _probabilities;
    private readonly float[] _sortKeys;
    private readonly int[] _order;
    private readonly float[]? _adjusted;     // logits after bias and penalties (null: none asked for)
    private readonly int[]? _counts;         // times each token was chosen (null: no penalties)
    private readonly int[] _biasTokens;      // the logit bias as arrays: enumerating the dictionary would allocate per token
    private readonly float[] _biasValues;
    private SeededRandom _random;

    /// <summary>Creates a sampler for a vocabulary of <paramref name="vocabSize"/>.</summary>
    public Sampler(SamplingOptions options, int vocabSize)
    {
        options.Validate(vocabSize);
        _options = options;
        _probabilities = new float[vocabSize];
        _sortKeys = new float[vocabSize];
        _order = new int[vocabSize];
        _random = new SeededRandom(options.Seed);
        _biasTokens = [.. options.LogitBias?.Keys ?? []];
        _biasValues = [.. _biasTokens.Select(t => options.LogitBias![t])];
        bool penalties = options.FrequencyPenalty != 0 || options.PresencePenalty != 0;
        if (penalties) _counts = new int[vocabSize];
        if (penalties || options.LogitBias is { Count: > 0 }) _adjusted = new float[vocabSize];
    }

    /// <summary>Whether every choice is the argmax of the logits as given (greedy, no bias, no penalties): a backend can make it without the logits leaving it.</summary>
    public bool IsPlainGreedy => _options.Temperature == 0 && _adjusted is null;

    /// <summary>Chooses a token from one row of <paramref name="logits"/> (not modified).</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        int token = Choose(_adjusted is null ? logits : Adjust(logits));
        if (_counts is not null) _counts[token]++;
        return token;
    }

    /// <summary>The logits with the bias added and the penalties of the tokens chosen so far subtracted, in scratch.</summary>
    private ReadOnlySpan<float> Adjust(ReadOnlySpan<float> logits)
    {
        var adjusted = _adjusted.AsSpan(0, logits.Length);
        logits.CopyTo(adjusted);
        for (int i = 0; i < _biasTokens.Length; i++) adjusted[_biasTokens[i]] += _biasValues[i];
        if (_counts is { } counts)
            for (int t = 0; t < adjusted.Length; t++)
                if (counts[t] > 0) adjusted[t] -= _options.FrequencyPenalty * counts[t] + _options.PresencePenalty;
        return adjusted;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Choose(ReadOnlySpan<float> logits)
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
