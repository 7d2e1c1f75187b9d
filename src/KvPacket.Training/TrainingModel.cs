using System.Numerics;

namespace KvPacket.Training;

/// <summary>The weights of a transformer as plain arrays of <typeparamref name="T"/>, row-major, with the shapes of <see cref="Core.Model.Checkpoint"/>.</summary>
public sealed class TrainingWeights<T> where T : IFloatingPointIeee754<T>
{
    /// <summary>Token embedding [vocab, hidden].</summary>
    public required T[] Embedding { get; init; }
    /// <summary>Per-layer weights.</summary>
    public required LayerParameters[] Layers { get; init; }
    /// <summary>Final RMSNorm [hidden].</summary>
    public required T[] FinalNorm { get; init; }
    /// <summary>Classifier [vocab, hidden] (the embedding array itself when tied).</summary>
    public required T[] Classifier { get; init; }

    /// <summary>One transformer block: norms [hidden]; q [heads·d, hidden]; k, v [kvHeads·d, hidden]; o [hidden, heads·d]; gate, up [ffn, hidden]; down [hidden, ffn]; biases optional (empty).</summary>
    public sealed record LayerParameters(T[] AttentionNorm, T[] Query, T[] Key, T[] Value, T[] Output, T[] FfnNorm, T[] Gate, T[] Up, T[] Down,
        T[] QueryBias, T[] KeyBias, T[] ValueBias);

    /// <summary>The weights of <paramref name="checkpoint"/>, widened (or narrowed) to <typeparamref name="T"/>.</summary>
    public static TrainingWeights<T> From(Core.Model.Checkpoint checkpoint)
    {
        static T[] Read(in Core.Model.WeightTensor tensor)
        {
            if (!tensor.IsPresent) return [];
            var values = new float[tensor.ElementCount];
            tensor.ReadRows(0, tensor.Rows, values);
            return [.. values.Select(T.CreateChecked)];
        }
        var embedding = Read(checkpoint.TokenEmbedding);
        return new TrainingWeights<T>
        {
            Embedding = embedding,
            Layers = [.. checkpoint.Layers.Select(l => new LayerParameters(Read(l.AttentionNorm), Read(l.Query), Read(l.Key), Read(l.Value), Read(l.Output),
                Read(l.FfnNorm), Read(l.Gate), Read(l.Up), Read(l.Down), Read(l.QueryBias), Read(l.KeyBias), Read(l.ValueBias)))],
            FinalNorm = Read(checkpoint.FinalNorm),
            Classifier = checkpoint.Config.TiedEmbeddings ? embedding : Read(checkpoint.Classifier),
        };
    }

    /// <summary>The same weights in <typeparamref name="TOut"/> (a tied classifier stays the embedding array).</summary>
    public TrainingWeights<TOut> Convert<TOut>() where TOut : IFloatingPointIeee754<TOut>
    {
        static TOut[] C(T[] values) => [.. values.Select(TOut.CreateChecked)];
        var embedding = C(Embedding);
        return new TrainingWeights<TOut>
        {
            Embedding = embedding,
            Layers = [.. Layers.Select(l => new TrainingWeights<TOut>.LayerParameters(C(l.AttentionNorm), C(l.Query), C(l.Key), C(l.Value), C(l.Output),
                C(l.FfnNorm), C(l.Gate), C(l.Up), C(l.Down), C(l.QueryBias), C(l.KeyBias), C(l.ValueBias)))],
            FinalNorm = C(FinalNorm),
            Classifier = ReferenceEquals(Classifier, Embedding) ? embedding : C(Classifier),
        };
    }

    /// <summary>Zero arrays of the same shapes (for gradients); tied classifier and embedding share one array here too.</summary>
    public TrainingWeights<T> ZerosLike()
    {
        var embedding = new T[Embedding.Length];
        return new()
        {
            Embedding = embedding,
            Layers = [.. Layers.Select(l => new LayerParameters(new T[l.AttentionNorm.Length], new T[l.Query.Length], new T[l.Key.Length], new T[l.Value.Length],
                new T[l.Output.Length], new T[l.FfnNorm.Length], new T[l.Gate.Length], new T[l.Up.Length], new T[l.Down.Length],
                new T[l.QueryBias.Length], new T[l.KeyBias.Length], new T[l.ValueBias.Length]))],
            FinalNorm = new T[FinalNorm.Length],
            Classifier = ReferenceEquals(Classifier, Embedding) ? embedding : new T[Classifier.Length],
        };
    }
}

/// <summary>
/// A transformer forward and backward pass for training, over one sequence whose rows are token ids or soft
/// embeddings (trainable adapters), at given positions, under a given visibility mask. That is enough for KV Packet
/// and KVLink distillation: packets computed alone and then attended by the continuation are one sequence with global
/// positions and a mask that keeps each packet to itself (RoPE depends only on relative positions). Every layer's
/// activations are kept for the backward pass, or, with <see cref="RecomputeActivations"/>, only each layer's input,
/// the rest recomputed layer by layer during the backward pass (memory bounded by one layer's activations). Readable
/// rather than fast: the reference the optimised paths are checked against. One instance runs one sequence at a time;
/// instances may share <see cref="TrainingWeights{T}"/> read-only across threads.
/// </summary>
public sealed class TrainingModel<T>(Core.Model.ModelConfig config, TrainingWeights<T> weights) where T : IFloatingPointIeee754<T>
{
    private readonly double[] _frequencies = Compute.Cpu.RotaryEmbedding.Frequencies(config);
    private Pass? _pass;

    /// <summary>The weights (updated in place by an optimiser).</summary>
    public TrainingWeights<T> Weights => weights;

    /// <summary>Keep only each layer's input and recompute the layer during <see cref="Backward"/> (activation checkpointing).</summary>
    public bool RecomputeActivations { get; init; }

    /// <summary>What one layer's forward pass keeps for its backward pass.</summary>
    private sealed class LayerActivations
    {
        public required T[] AttentionNormed, Q, K, V, Probabilities, Attended, Mid, FfnNormed, Gate, Up, Hidden;
    }

    /// <summary>What a forward pass keeps for the backward pass.</summary>
    private sealed class Pass
    {
        public required int[] Tokens, Positions;
        public required Func<int, int, bool> Visible;
        public required T[][] LayerInputs;
        public required LayerActivations?[] Layers;
        public required T[] FinalInput, FinalNormed;
    }

    /// <summary>
    /// Runs the sequence: row i is token <paramref name="tokens"/>[i], or (for −1) the next row of
    /// <paramref name="soft"/> ([n, hidden]); at <paramref name="positions"/>[i]; row i attends to row j when
    /// <paramref name="visible"/>(i, j). Returns logits [rows, vocab].
    /// </summary>
    public T[] Forward(int[] tokens, ReadOnlySpan<T> soft, int[] positions, Func<int, int, bool> visible)
    {
        var c = config;
        int n = tokens.Length, d = c.HiddenSize;
        T epsilon = T.CreateChecked(c.NormEpsilon);
        var x = new T[n * d];
        for (int i = 0, s = 0; i < n; i++)
        {
            var source = tokens[i] >= 0 ? weights.Embedding.AsSpan(tokens[i] * d, d) : soft.Slice(s++ * d, d);
            source.CopyTo(x.AsSpan(i * d, d));
        }
        var pass = new Pass
        {
            Tokens = tokens, Positions = positions, Visible = visible,
            LayerInputs = new T[c.LayerCount][], Layers = new LayerActivations?[c.LayerCount],
            FinalInput = null!, FinalNormed = null!,
        };
        for (int l = 0; l < c.LayerCount; l++)
        {
            pass.LayerInputs[l] = (T[])x.Clone();
            var activations = ForwardLayer(l, x, n, positions, visible);
            if (!RecomputeActivations) pass.Layers[l] = activations;
        }
        pass.FinalInput = (T[])x.Clone();
        pass.FinalNormed = new T[n * d];
        Ops<T>.RmsNorm(x, weights.FinalNorm, pass.FinalNormed, n, d, epsilon);
        var logits = new T[n * c.VocabSize];
        Ops<T>.Linear(pass.FinalNormed, weights.Classifier, [], logits, n, d, c.VocabSize);
        _pass = pass;
        return logits;
    }

    /// <summary>Layer <paramref name="l"/> over <paramref name="x"/> ([n, hidden], replaced by the layer's output), keeping what its backward pass needs.</summary>
    private LayerActivations ForwardLayer(int l, T[] x, int n, int[] positions, Func<int, int, bool> visible)
    {
        var c = config;
        int d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, f = c.IntermediateSize;
        T epsilon = T.CreateChecked(c.NormEpsilon);
        bool interleaved = c.RopeStyle == Core.Model.RopeStyle.Interleaved;
        var w = weights.Layers[l];
        var a = new LayerActivations
        {
            AttentionNormed = new T[n * d], Q = new T[n * q], K = new T[n * kv], V = new T[n * kv], Probabilities = new T[n * c.HeadCount * n],
            Attended = new T[n * q], Mid = null!, FfnNormed = new T[n * d], Gate = new T[n * f], Up = new T[n * f], Hidden = new T[n * f],
        };
        Ops<T>.RmsNorm(x, w.AttentionNorm, a.AttentionNormed, n, d, epsilon);
        Ops<T>.Linear(a.AttentionNormed, w.Query, w.QueryBias, a.Q, n, d, q);
        Ops<T>.Linear(a.AttentionNormed, w.Key, w.KeyBias, a.K, n, d, kv);
        Ops<T>.Linear(a.AttentionNormed, w.Value, w.ValueBias, a.V, n, d, kv);
        Ops<T>.Rope(a.Q, positions, _frequencies, c.HeadCount, c.HeadDim, interleaved);
        Ops<T>.Rope(a.K, positions, _frequencies, c.KvHeadCount, c.HeadDim, interleaved);
        Ops<T>.Attention(a.Q, a.K, a.V, a.Attended, a.Probabilities, n, n, c.HeadCount, c.KvHeadCount, c.HeadDim, visible);
        var projected = new T[n * d];
        Ops<T>.Linear(a.Attended, w.Output, [], projected, n, q, d);
        for (int i = 0; i < x.Length; i++) x[i] += projected[i];
        a.Mid = (T[])x.Clone();
        Ops<T>.RmsNorm(x, w.FfnNorm, a.FfnNormed, n, d, epsilon);
        Ops<T>.Linear(a.FfnNormed, w.Gate, [], a.Gate, n, d, f);
        Ops<T>.Linear(a.FfnNormed, w.Up, [], a.Up, n, d, f);
        Ops<T>.SwiGlu(a.Gate, a.Up, a.Hidden);
        Ops<T>.Linear(a.Hidden, w.Down, [], projected, n, f, d);
        for (int i = 0; i < x.Length; i++) x[i] += projected[i];
        return a;
    }

    /// <summary>
    /// Backward pass of the last <see cref="Forward"/> (once) for <paramref name="dLogits"/> ([rows, vocab]): adds the gradient
    /// with respect to each soft row into <paramref name="dSoft"/> ([soft rows, hidden]) and, when given, the weights'
    /// gradients into <paramref name="dWeights"/> (the classifier's into the embedding's when tied).
    /// </summary>
    public void Backward(ReadOnlySpan<T> dLogits, Span<T> dSoft, TrainingWeights<T>? dWeights = null)
    {
        var pass = _pass ?? throw new InvalidOperationException("Backward needs a Forward first.");
        var c = config;
        int n = pass.Tokens.Length, d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, f = c.IntermediateSize;
        T epsilon = T.CreateChecked(c.NormEpsilon);
        bool interleaved = c.RopeStyle == Core.Model.RopeStyle.Interleaved;
        var dNormed = new T[n * d];
        var classifierGradient = dWeights is null ? default : dWeights.Classifier.AsSpan();
        Ops<T>.LinearBackward(pass.FinalNormed, weights.Classifier, dLogits, dNormed, classifierGradient, [], n, d, c.VocabSize);
        var dx = new T[n * d];
        Ops<T>.RmsNormBackward(pass.FinalInput, weights.FinalNorm, dNormed, dx, dWeights?.FinalNorm ?? default, n, d, epsilon);
        for (int l = c.LayerCount - 1; l >= 0; l--)
        {
            var w = weights.Layers[l];
            var g = dWeights?.Layers[l];
            var a = pass.Layers[l] ?? ForwardLayer(l, (T[])pass.LayerInputs[l].Clone(), n, pass.Positions, pass.Visible);
            // Feed-forward: x_out = mid + down(swiglu(gate(norm(mid)), up(norm(mid)))).
            var dHidden = new T[n * f];
            Ops<T>.LinearBackward(a.Hidden, w.Down, dx, dHidden, g?.Down ?? default, [], n, f, d);
            T[] dGate = new T[n * f], dUp = new T[n * f];
            Ops<T>.SwiGluBackward(a.Gate, a.Up, dHidden, dGate, dUp);
            var dFfnNormed = new T[n * d];
            Ops<T>.LinearBackward(a.FfnNormed, w.Gate, dGate, dFfnNormed, g?.Gate ?? default, [], n, d, f);
            Ops<T>.LinearBackward(a.FfnNormed, w.Up, dUp, dFfnNormed, g?.Up ?? default, [], n, d, f);
            Ops<T>.RmsNormBackward(a.Mid, w.FfnNorm, dFfnNormed, dx, g?.FfnNorm ?? default, n, d, epsilon); // dx now d(mid)
            // Attention: mid = x_in + o(attention(rope(q), rope(k), v)).
            var dAttended = new T[n * q];
            Ops<T>.LinearBackward(a.Attended, w.Output, dx, dAttended, g?.Output ?? default, [], n, q, d);
            T[] dq = new T[n * q], dk = new T[n * kv], dv = new T[n * kv];
            Ops<T>.AttentionBackward(a.Q, a.K, a.V, a.Probabilities, dAttended, dq, dk, dv, n, n, c.HeadCount, c.KvHeadCount, c.HeadDim);
            Ops<T>.Rope(dq, pass.Positions, _frequencies, c.HeadCount, c.HeadDim, interleaved, direction: -1);
            Ops<T>.Rope(dk, pass.Positions, _frequencies, c.KvHeadCount, c.HeadDim, interleaved, direction: -1);
            var dAttentionNormed = new T[n * d];
            Ops<T>.LinearBackward(a.AttentionNormed, w.Query, dq, dAttentionNormed, g?.Query ?? default, g?.QueryBias ?? default, n, d, q);
            Ops<T>.LinearBackward(a.AttentionNormed, w.Key, dk, dAttentionNormed, g?.Key ?? default, g?.KeyBias ?? default, n, d, kv);
            Ops<T>.LinearBackward(a.AttentionNormed, w.Value, dv, dAttentionNormed, g?.Value ?? default, g?.ValueBias ?? default, n, d, kv);
            Ops<T>.RmsNormBackward(pass.LayerInputs[l], w.AttentionNorm, dAttentionNormed, dx, g?.AttentionNorm ?? default, n, d, epsilon); // dx now d(x_in)
        }
        for (int i = 0, s = 0; i < n; i++)
        {
            var row = dx.AsSpan(i * d, d);
            if (pass.Tokens[i] < 0)
            {
                var target = dSoft.Slice(s++ * d, d);
                for (int j = 0; j < d; j++) target[j] += row[j];
            }
            else if (dWeights is not null)
            {
                var target = dWeights.Embedding.AsSpan(pass.Tokens[i] * d, d);
                for (int j = 0; j < d; j++) target[j] += row[j];
            }
        }
        _pass = null; // the activations are not needed again; let them go before the next example
    }
}
