using System.Diagnostics;

namespace KvPacket.Engine.Forward;

/// <summary>
/// Wall time of each stage of <see cref="Transformer.Forward"/>, summed over the steps run while it is attached
/// (<see cref="Transformer.Profile"/>): where a decode step's time goes. Detached, the forward pass reads no clock.
/// </summary>
public sealed class ForwardProfile
{
    /// <summary>The stages, in the order a layer runs them.</summary>
    public enum Stage
    {
        /// <summary>Token embedding rows.</summary>
        Embedding,
        /// <summary>RMSNorm before attention and before the feed-forward block, and the final norm.</summary>
        Norm,
        /// <summary>The query, key and value projections (with biases).</summary>
        QueryKeyValue,
        /// <summary>RoPE on the new keys, appending K and V to the cache, and attention (which rotates the queries).</summary>
        Attention,
        /// <summary>The attention output projection.</summary>
        Output,
        /// <summary>The gate and up projections.</summary>
        GateUp,
        /// <summary>SiLU(gate) ⊙ up.</summary>
        SwiGlu,
        /// <summary>The down projection.</summary>
        Down,
        /// <summary>The two residual additions.</summary>
        Residual,
        /// <summary>The classifier (logits).</summary>
        Classifier,
    }

    private readonly long[] _ticks = new long[Enum.GetValues<Stage>().Length];
    private static readonly string[] Names = Enum.GetNames<Stage>();

    /// <summary>Forward steps timed.</summary>
    public long Steps { get; internal set; }

    /// <summary>Seconds spent in <paramref name="stage"/> over all steps.</summary>
    public double Seconds(Stage stage) => _ticks[(int)stage] / (double)Stopwatch.Frequency;

    /// <summary>Seconds over all stages and steps.</summary>
    public double TotalSeconds => _ticks.Sum() / (double)Stopwatch.Frequency;

    /// <summary>Adds the time since <paramref name="start"/> to <paramref name="stage"/>; returns now, the next stage's start.</summary>
    internal long Lap(Stage stage, long start)
    {
        long now = Stopwatch.GetTimestamp();
        _ticks[(int)stage] += now - start;
        return now;
    }

    /// <summary>Milliseconds per stage (by the stage's name, stages that took any time) since the last reset, then resets.</summary>
    public Dictionary<string, double> TakeMilliseconds()
    {
        var times = new Dictionary<string, double>();
        foreach (var stage in Enum.GetValues<Stage>())
            if (_ticks[(int)stage] > 0) times[Names[(int)stage]] = Seconds(stage) * 1e3;
        Reset();
        return times;
    }

    /// <summary>Forgets every time recorded.</summary>
    public void Reset()
    {
        Array.Clear(_ticks);
        Steps = 0;
    }
}
