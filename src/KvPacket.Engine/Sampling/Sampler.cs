using KvPacket.Compute.Sampling;
using KvPacket.Core.Numerics;

namespace KvPacket.Engine.Sampling;

/// <summary>
/// Picks tokens from logits: greedy, or temperature with optional top-k and top-p (<see cref="TokenDraw"/>'s rule), from
/// a seeded stream so a run is reproducible; logit bias and frequency / presence penalties (over the tokens this sampler
/// chose before) adjust a copy of the logits first. Without those, a backend can choose on the device from
/// <see cref="NextDraw"/>. Scratch is sized to the vocabulary on first use; sampling allocates nothing after it.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private readonly TokenDraw.Scratch _scratch; // buffers made by the first draw that needs them
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
        _scratch = new TokenDraw.Scratch(vocabSize);
        _random = new SeededRandom(options.Seed);
        _biasTokens = [.. options.LogitBias?.Keys ?? []];
        _biasValues = [.. _biasTokens.Select(t => options.LogitBias![t])];
        bool penalties = options.FrequencyPenalty != 0 || options.PresencePenalty != 0;
        if (penalties) _counts = new int[vocabSize];
        if (penalties || options.LogitBias is { Count: > 0 }) _adjusted = new float[vocabSize];
    }

    /// <summary>Whether choices depend on the logits as given alone (no bias, no penalties): a backend can then make them from <see cref="NextDraw"/> without the logits leaving it.</summary>
    public bool UsesPlainLogits => _adjusted is null;

    /// <summary>The next choice's rule and random bits, for a backend to apply to the logits (only when <see cref="UsesPlainLogits"/>); advances the stream as <see cref="Sample"/> does.</summary>
    public TokenDraw NextDraw()
    {
        if (_adjusted is not null) throw new InvalidOperationException("This sampler adjusts the logits (bias or penalties): it samples on the host.");
        return Draw();
    }

    private TokenDraw Draw() => _options.Temperature == 0 ? TokenDraw.Greedy : new TokenDraw(_options.Temperature, _options.TopK, _options.TopP, _random.NextUInt64());

    /// <summary>Chooses a token from one row of <paramref name="logits"/> (not modified).</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        var draw = Draw();
        var values = _adjusted is null ? logits : Adjust(logits);
        int token = draw.Choose(values, _scratch);
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
}
