using System.Globalization;

namespace KvPacket.Core.Model;

/// <summary>
/// Per-frequency RoPE divisors, one per rotated pair (head dim / 2): the i-th inverse frequency is
/// θ^(−2i/d) / Values[i]. GGUF files carry Llama-3 scaling this way (the <c>rope_freqs.weight</c> tensor), not as the
/// four parameters of <see cref="RopeScaling"/>. Compared by value.
/// </summary>
/// <param name="Values">The divisors.</param>
public sealed record RopeFrequencyFactors(double[] Values)
{
    /// <summary>The divisors equivalent to <paramref name="scaling"/> for base <paramref name="theta"/> and <paramref name="headDim"/>.</summary>
    public static RopeFrequencyFactors Of(RopeScaling scaling, double theta, int headDim)
    {
        var values = new double[headDim / 2];
        for (int i = 0; i < values.Length; i++)
        {
            double frequency = Math.Pow(theta, -2.0 * i / headDim);
            values[i] = frequency / scaling.Apply(frequency);
        }
        return new RopeFrequencyFactors(values);
    }

    /// <inheritdoc />
    public bool Equals(RopeFrequencyFactors? other) => other is not null && Values.AsSpan().SequenceEqual(other.Values);

    /// <inheritdoc />
    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (double value in Values) hash.Add(value);
        return hash.ToHashCode();
    }

    /// <inheritdoc />
    public override string ToString() => "rope_freqs[" + string.Join(",", Values.Select(v => v.ToString("R", CultureInfo.InvariantCulture))) + "]";
}
