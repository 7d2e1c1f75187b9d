using KvPacket.Core.Model;
using KvPacket.Engine.Rag;

namespace KvPacket.Training;

/// <summary>Settings of a KV Packet adapter distillation run.</summary>
public sealed record DistillationOptions
{
    /// <summary>Header soft tokens.</summary>
    public int Header { get; init; } = 4;
    /// <summary>Trailer soft tokens.</summary>
    public int Trailer { get; init; } = 4;
    /// <summary>Optimiser steps (one example each).</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 0.05;
    /// <summary>Linear warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 10;
    /// <summary>Gradient L2 norm limit.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Seed of the example order and the initial adapter.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Adapter name.</summary>
    public string Name { get; init; } = "kvpacket";
}

/// <summary>
/// Trains KV Packet's header and trailer by self-supervised distillation with the model frozen: the student is the
/// masked single sequence <c>[prefix] [H D1 T] [H D2 T] … [continuation]</c> (each packet sees only itself, the
/// continuation sees everything; the same computation as placing packets built alone), the loss is
/// KL(teacher ‖ student) over the continuation rows, and gradients flow into every header and trailer occurrence.
/// </summary>
public sealed class KvPacketDistillation(Checkpoint checkpoint, DistillationOptions options)
{
    private readonly TrainingModel<float> _model = new(checkpoint.Config, TrainingWeights<float>.From(checkpoint));
    private readonly int _hidden = checkpoint.Config.HiddenSize;

    /// <summary>
    /// The starting adapter: every soft token is the BOS embedding. (Zeros are a poor start: RMSNorm of a zero row has a
    /// gradient of 1/√ε, and the first step throws the rows anywhere.)
    /// </summary>
    public Adapter Initial()
    {
        var bos = new float[_hidden];
        checkpoint.TokenEmbedding.ReadRow(checkpoint.Config.BosTokenId ?? 1, bos);
        float[] Rows(int count) => [.. Enumerable.Range(0, count).SelectMany(_ => bos)];
        return new Adapter(options.Name, 0, Rows(options.Header), Rows(options.Trailer), []);
    }

    /// <summary>Trains on <paramref name="examples"/> (cycled in a seeded order) from <paramref name="start"/> (<see cref="Initial"/> when null); <paramref name="onStep"/> sees (step, loss, learning rate).</summary>
    public Adapter Train(IReadOnlyList<DistillationExample> examples, Action<int, double, double>? onStep = null, Adapter? start = null)
    {
        int size = (options.Header + options.Trailer) * _hidden;
        var parameters = new float[size];
        start ??= Initial();
        start.Header.CopyTo(parameters, 0);
        start.Trailer.CopyTo(parameters, start.Header.Length);
        var optimiser = new AdamW(size);
        var gradients = new float[size];
        var order = new Core.Numerics.SeededRandom(options.Seed);
        for (int step = 0; step < options.Steps; step++)
        {
            var example = examples[(int)(order.NextUInt64() % (ulong)examples.Count)];
            Array.Clear(gradients);
            double loss = LossAndGradient(example, parameters, gradients);
            AdamW.ClipByNorm(gradients, options.ClipNorm);
            double rate = AdamW.Schedule(step, options.Steps, options.WarmupSteps, options.LearningRate);
            optimiser.Step(parameters, gradients, rate);
            onStep?.Invoke(step, loss, rate);
        }
        return ToAdapter(parameters, 1);
    }

    /// <summary>Mean KL(teacher ‖ student) per continuation row of <paramref name="example"/> with <paramref name="adapter"/>, in nats.</summary>
    public double Loss(DistillationExample example, Adapter adapter)
    {
        float[] parameters = [.. adapter.Header, .. adapter.Trailer];
        return LossAndGradient(example, parameters, null);
    }

    private Adapter ToAdapter(float[] parameters, int version) =>
        new(options.Name, version, parameters[..(options.Header * _hidden)], parameters[(options.Header * _hidden)..], []);

    private double LossAndGradient(DistillationExample example, float[] parameters, float[]? gradients)
    {
        var (tokens, soft, positions, segments) = Layout(example, parameters);
        int vocab = checkpoint.Config.VocabSize, continuationStart = tokens.Length - example.Continuation.Length;
        int last = segments[^1];
        bool Visible(int i, int j) => j <= i && (segments[i] == segments[j] || segments[i] == last);
        var logits = _model.Forward(tokens, soft, positions, Visible);
        var dLogits = new float[logits.Length];
        double loss = 0;
        float weight = 1f / example.Continuation.Length;
        for (int r = 0; r < example.Continuation.Length; r++)
            loss += Ops<float>.KlDivergence(example.Teacher.AsSpan(r * vocab, vocab), logits.AsSpan((continuationStart + r) * vocab, vocab),
                gradients is null ? default : dLogits.AsSpan((continuationStart + r) * vocab, vocab), weight);
        if (gradients is not null)
        {
            var dSoft = new float[soft.Length];
            _model.Backward(dLogits, dSoft);
            // Every packet's header and trailer are the same parameters: their gradients add.
            int perPacket = (options.Header + options.Trailer) * _hidden;
            for (int p = 0; p < example.Documents.Length; p++)
                for (int i = 0; i < perPacket; i++) gradients[i] += dSoft[p * perPacket + i];
        }
        return loss / example.Continuation.Length;
    }

    /// <summary>The student's rows: tokens (−1 for soft rows), the soft rows themselves, global positions and segment ids.</summary>
    private (int[] Tokens, float[] Soft, int[] Positions, int[] Segments) Layout(DistillationExample example, float[] parameters)
    {
        var tokens = new List<int>();
        var segments = new List<int>();
        var soft = new List<float>();
        tokens.AddRange(example.Prefix);
        segments.AddRange(example.Prefix.Select(_ => 0));
        int header = options.Header * _hidden;
        for (int d = 0; d < example.Documents.Length; d++)
        {
            tokens.AddRange(Enumerable.Repeat(-1, options.Header));
            tokens.AddRange(example.Documents[d]);
            tokens.AddRange(Enumerable.Repeat(-1, options.Trailer));
            segments.AddRange(Enumerable.Repeat(d + 1, options.Header + example.Documents[d].Length + options.Trailer));
            soft.AddRange(parameters.AsSpan(0, header).ToArray());
            soft.AddRange(parameters.AsSpan(header).ToArray());
        }
        tokens.AddRange(example.Continuation);
        segments.AddRange(example.Continuation.Select(_ => example.Documents.Length + 1));
        return ([.. tokens], [.. soft], [.. Enumerable.Range(0, tokens.Count)], [.. segments]);
    }
}
