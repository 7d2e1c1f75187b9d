using System.Diagnostics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Generation;

/// <summary>
/// Single-sequence generation: prefill the prompt (<see cref="Transformer.Prefill(Sequence, ReadOnlySpan{int}, Span{float}, LogitsFor)"/>), then decode one token per step until
/// a stop token or the token limit. The decode loop reuses one batch and one logits row, so it allocates nothing.
/// </summary>
public sealed class Generator
{
    private readonly Transformer _model;
    private readonly ForwardBatch _batch;
    private readonly float[] _logits;
    private readonly int[] _single = new int[1];

    /// <summary>Creates a generator over <paramref name="model"/>.</summary>
    public Generator(Transformer model)
    {
        _model = model;
        _batch = new ForwardBatch(1, 1);
        _logits = new float[model.Config.VocabSize];
    }

    /// <summary>Where the prefill and each decode step are recorded, on row 0 (null: nowhere).</summary>
    public Core.Diagnostics.TraceRecorder? Trace { get; init; }

    /// <summary>
    /// Generates after <paramref name="prompt"/>, calling <paramref name="onToken"/> with each new token as it is chosen.
    /// </summary>
    public GenerationStats Generate(ReadOnlySpan<int> prompt, GenerationOptions options, Action<int>? onToken = null)
    {
        if (prompt.IsEmpty) throw new ArgumentException("The prompt needs at least one token (BOS, say).", nameof(prompt));
        if (prompt.Length + options.MaxNewTokens > _model.Config.MaxContextLength)
            throw new ArgumentOutOfRangeException(nameof(options), $"Prompt ({prompt.Length}) plus {options.MaxNewTokens} new tokens exceeds the context of {_model.Config.MaxContextLength}.");
        var stops = options.StopTokens ?? _model.Config.EosTokenIds;
        var sampler = new Sampler(options.Sampling, _model.Config.VocabSize);
        using var sequence = _model.CreateSequence();

        long start = Stopwatch.GetTimestamp();
        _model.Prefill(sequence, prompt, _logits);
        double prefill = Stopwatch.GetElapsedTime(start).TotalSeconds;
        Trace?.Record("prefill", "generate", 0, start, Stopwatch.GetTimestamp(), "tokens", prompt.Length);

        start = Stopwatch.GetTimestamp();
        int generated = 0;
        bool stopped = false;
        while (generated < options.MaxNewTokens)
        {
            int token = sampler.Sample(_logits);
            generated++;
            onToken?.Invoke(token);
            if (Contains(stops, token)) { stopped = true; break; }
            if (generated == options.MaxNewTokens) break;
            _single[0] = token;
            _batch.Clear();
            _batch.Add(sequence, _single);
            long step = Stopwatch.GetTimestamp();
            _model.Forward(_batch, _logits);
            Trace?.Record("decode", "generate", 0, step, Stopwatch.GetTimestamp(), "position", sequence.Length - 1);
        }
        return new GenerationStats(prompt.Length, generated, prefill, Stopwatch.GetElapsedTime(start).TotalSeconds, stopped);
    }

    private static bool Contains(IReadOnlyList<int> list, int value)
    {
        for (int i = 0; i < list.Count; i++)
            if (list[i] == value) return true;
        return false;
    }
}
