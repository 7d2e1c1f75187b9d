namespace KvPacket.Training;

/// <summary>AdamW over one flat parameter vector: Adam moments with bias correction and decoupled weight decay.</summary>
public sealed class AdamW(int size, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8, double weightDecay = 0.0)
{
    private readonly double[] _m = new double[size], _v = new double[size];
    private int _step;

    /// <summary>Updates of <see cref="Step"/> so far.</summary>
    public int Steps => _step;

    /// <summary>The first-moment (mean) estimates, one per parameter.</summary>
    public ReadOnlySpan<double> FirstMoments => _m;

    /// <summary>The second-moment (uncentred variance) estimates, one per parameter.</summary>
    public ReadOnlySpan<double> SecondMoments => _v;

    /// <summary>Puts the optimiser back where a checkpoint left it: <paramref name="steps"/> updates done, with these moments.</summary>
    public void Restore(int steps, ReadOnlySpan<double> firstMoments, ReadOnlySpan<double> secondMoments)
    {
        if (firstMoments.Length != _m.Length || secondMoments.Length != _v.Length)
            throw new ArgumentException($"the optimiser has {_m.Length} parameters, the moments {firstMoments.Length} and {secondMoments.Length}.");
        _step = steps;
        firstMoments.CopyTo(_m);
        secondMoments.CopyTo(_v);
    }

    /// <summary>One update of <paramref name="parameters"/> by <paramref name="gradients"/> at <paramref name="learningRate"/>.</summary>
    public void Step(Span<float> parameters, ReadOnlySpan<float> gradients, double learningRate)
    {
        _step++;
        double correction1 = 1 - Math.Pow(beta1, _step), correction2 = 1 - Math.Pow(beta2, _step);
        for (int i = 0; i < parameters.Length; i++)
        {
            _m[i] = beta1 * _m[i] + (1 - beta1) * gradients[i];
            _v[i] = beta2 * _v[i] + (1 - beta2) * gradients[i] * gradients[i];
            double update = _m[i] / correction1 / (Math.Sqrt(_v[i] / correction2) + epsilon);
            parameters[i] = (float)(parameters[i] - learningRate * (update + weightDecay * parameters[i]));
        }
    }

    /// <summary>Learning rate at <paramref name="step"/>: linear warm-up to <paramref name="peak"/>, then cosine decay to 10% of it.</summary>
    public static double Schedule(int step, int totalSteps, int warmupSteps, double peak)
    {
        if (step < warmupSteps) return peak * (step + 1) / warmupSteps;
        double progress = (double)(step - warmupSteps) / Math.Max(1, totalSteps - warmupSteps);
        return peak * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1, progress))));
    }

    /// <summary>Scales <paramref name="gradients"/> so their L2 norm is at most <paramref name="maxNorm"/>; returns the norm before.</summary>
    public static double ClipByNorm(Span<float> gradients, double maxNorm)
    {
        double norm = 0;
        foreach (float g in gradients) norm += (double)g * g;
        norm = Math.Sqrt(norm);
        if (norm > maxNorm)
            for (int i = 0; i < gradients.Length; i++) gradients[i] = (float)(gradients[i] * maxNorm / norm);
        return norm;
    }
}
