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

    /// <summary>Prepares the frequencies for <paramref name="config"/>.</summary>
    public RotaryEmbedding(ModelConfig config)
    {
        _headDim = config.HeadDim;
        _style = config.RopeStyle;
        _inverseFrequencies = new double[_headDim / 2];
        for (int i = 0; i < _inverseFrequencies.Length; i++)
        {
            double frequency = Math.Pow(config.RopeTheta, -2.0 * i / _headDim);
            _inverseFrequencies[i] = config.RopeScaling?.Apply(frequency) ?? frequency;
        }
    }

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
