namespace KvPacket.Core.Model;

/// <summary>
/// Llama-3 ("llama3" rope_type) frequency scaling: low frequencies are divided by <see cref="Factor"/>,
/// high frequencies are kept, and the band between is interpolated smoothly.
/// </summary>
/// <param name="Factor">Scale applied to long wavelengths.</param>
/// <param name="LowFrequencyFactor">Wavelengths above original_context / low are fully scaled.</param>
/// <param name="HighFrequencyFactor">Wavelengths below original_context / high are not scaled.</param>
/// <param name="OriginalContextLength">The context length the base frequencies were trained for.</param>
public sealed record RopeScaling(double Factor, double LowFrequencyFactor, double HighFrequencyFactor, int OriginalContextLength)
{
    /// <summary>The inverse frequency after scaling.</summary>
    public double Apply(double inverseFrequency)
    {
        double wavelength = 2 * Math.PI / inverseFrequency;
        double lowWavelength = OriginalContextLength / LowFrequencyFactor;
        double highWavelength = OriginalContextLength / HighFrequencyFactor;
        if (wavelength < highWavelength) return inverseFrequency;
        if (wavelength > lowWavelength) return inverseFrequency / Factor;
        double smooth = (OriginalContextLength / wavelength - LowFrequencyFactor) / (HighFrequencyFactor - LowFrequencyFactor);
        return (1 - smooth) * inverseFrequency / Factor + smooth * inverseFrequency;
    }
}
