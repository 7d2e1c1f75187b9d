using System.Runtime.CompilerServices;
using KvPacket.Core.Model;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// Rotary position embedding for one model: inverse frequencies (with Llama-3 scaling when configured) computed
/// once in float64; the angle pos·freq is taken in float64 too so long positions keep their precision.
/// </summary>
public sealed class RotaryEmbedding
{
    private readonly double[] _inverseFrequencies;
    private readonly RopeStyle _style;
    private readonly int _headDim;

    /// <summary>
    /// Prepares the frequencies for <paramref name="config"/>, or takes <paramref name="inverseFrequencies"/> (a model
    /// spec's table, computed by the source generator with the same arithmetic) when given.
    /// </summary>
    public RotaryEmbedding(ModelConfig config, ReadOnlySpan<double> inverseFrequencies = default)
    {
        _headDim = config.HeadDim;
        _style = config.RopeStyle;
        if (!inverseFrequencies.IsEmpty)
        {
            if (inverseFrequencies.Length != _headDim / 2) throw new ArgumentException($"{inverseFrequencies.Length} frequencies for head dim {_headDim}.", nameof(inverseFrequencies));
            _inverseFrequencies = inverseFrequencies.ToArray();
            return;
        }
        _inverseFrequencies = Frequencies(config);
    }

    /// <summary>The inverse frequencies of <paramref name="config"/>, Llama-3 scaling and per-frequency factors applied, in float64.</summary>
    public static double[] Frequencies(ModelConfig config)
    {
        var result = new double[config.HeadDim / 2];
        for (int i = 0; i < result.Length; i++)
        {
            double frequency = Math.Pow(config.RopeTheta, -2.0 * i / config.HeadDim);
            result[i] = (config.RopeScaling?.Apply(frequency) ?? frequency) / (config.RopeFrequencyFactors?.Values[i] ?? 1);
        }
        return result;
    }

    /// <summary>The inverse frequencies in use.</summary>
    public ReadOnlySpan<double> InverseFrequencies => _inverseFrequencies;

    /// <summary>Pairs per head.</summary>
    public int PairCount => _inverseFrequencies.Length;

    /// <summary>Fills cos/sin (each <see cref="PairCount"/> long) for <paramref name="position"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Angles(int position, Span<float> cos, Span<float> sin)
    {
        for (int i = 0; i < _inverseFrequencies.Length; i++)
        {
            double angle = position * _inverseFrequencies[i];
            cos[i] = (float)Math.Cos(angle);
            sin[i] = (float)Math.Sin(angle);
        }
    }

    /// <summary>Rotates each of the <paramref name="heads"/> heads in <paramref name="vector"/> by the given angles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Rotate(Span<float> vector, int heads, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = _headDim / 2;
        for (int h = 0; h < heads; h++)
        {
            var head = vector.Slice(h * _headDim, _headDim);
            if (_style == RopeStyle.Interleaved)
            {
                for (int i = 0; i < half; i++)
                {
                    float a = head[2 * i], b = head[2 * i + 1];
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
            else
            {
                for (int i = 0; i < half; i++)
                {
                    float a = head[i], b = head[i + half];
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}
