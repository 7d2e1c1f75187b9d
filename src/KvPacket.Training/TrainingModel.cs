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
/// distillation: packets computed alone and then attended by the continuation are one sequence with global positions
/// and a mask that keeps each packet to itself (RoPE depends only on relative positions). Activations of every layer
/// are kept for the backward pass. Readable rather than fast: the reference the optimised paths are checked against.
/// </summary>
public sealed class TrainingModel<T>(Core.Model.ModelConfig config, TrainingWeights<T> weights) where T : IFloatingPointIeee754<T>
{
    private readonly double[] _frequencies = Compute.Cpu.RotaryEmbedding.Frequencies(config);
    private Pass? _pass;

    /// <summary>The weights (updated in place by an optimiser).</summary>
    public TrainingWeights<T> Weights => weights;

    /// <summary>What a forward pass keeps for the backward pass.</summary>
    private sealed class Pass
    {
        public required int[] Tokens, Positions;
        public required Func<int, int, bool> Visible;
        public required T[][] LayerInputs, AttentionNormed, Q, K, V, Probabilities, Attended, Mid, FfnNormed, Gate, Up, Hidden;
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
        int n = tokens.Length, d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, f = c.IntermediateSize, layers = c.LayerCount;
        T epsilon = T.CreateChecked(c.NormEpsilon);
        bool interleaved = c.RopeStyle == Core.Model.RopeStyle.Interleaved;
        var x = new T[n * d];
        for (int i = 0, s = 0; i < n; i++)
        {
            var source = tokens[i] >= 0 ? weights.Embedding.AsSpan(tokens[i] * d, d) : soft.Slice(s++ * d, d);
            source.CopyTo(x.AsSpan(i * d, d));
        }
        T[][] Layers() => new T[layers][];
        var pass = new Pass
        {
            Tokens = tokens, Positions = positions, Visible = visible,
            LayerInputs = Layers(), AttentionNormed = Layers(), Q = Layers(), K = Layers(), V = Layers(), Probabilities = Layers(),
            Attended = Layers(), Mid = Layers(), FfnNormed = Layers(), Gate = Layers(), Up = Layers(), Hidden = Layers(),
            FinalInput = null!, FinalNormed = null!,
        };
        for (int l = 0; l < layers; l++)
        {
            var w = weights.Layers[l];
            pass.LayerInputs[l] = (T[])x.Clone();
            var normed = pass.AttentionNormed[l] = new T[n * d];
            Ops<T>.RmsNorm(x, w.AttentionNorm, normed, n, d, epsilon);
            var qs = pass.Q[l] = new T[n * q];
            var ks = pass.K[l] = new T[n * kv];
            var vs = pass.V[l] = new T[n * kv];
            Ops<T>.Linear(normed, w.Query, w.QueryBias, qs, n, d, q);
            Ops<T>.Linear(normed, w.Key, w.KeyBias, ks, n, d, kv);
            Ops<T>.Linear(normed, w.Value, w.ValueBias, vs, n, d, kv);
            Ops<T>.Rope(qs, positions, _frequencies, c.HeadCount, c.HeadDim, interleaved);
            Ops<T>.Rope(ks, positions, _frequencies, c.KvHeadCount, c.HeadDim, interleaved);
            var attended = pass.Attended[l] = new T[n * q];
            var probabilities = pass.Probabilities[l] = new T[n * c.HeadCount * n];
            Ops<T>.Attention(qs, ks, vs, attended, probabilities, n, n, c.HeadCount, c.KvHeadCount, c.HeadDim, visible);
            var projected = new T[n * d];
            Ops<T>.Linear(attended, w.Output, [], projected, n, q, d);
            for (int i = 0; i < x.Length; i++) x[i] += projected[i];
            pass.Mid[l] = (T[])x.Clone();
            var ffnNormed = pass.FfnNormed[l] = new T[n * d];
            Ops<T>.RmsNorm(x, w.FfnNorm, ffnNormed, n, d, epsilon);
            var gate = pass.Gate[l] = new T[n * f];
            var up = pass.Up[l] = new T[n * f];
            Ops<T>.Linear(ffnNormed, w.Gate, [], gate, n, d, f);
            Ops<T>.Linear(ffnNormed, w.Up, [], up, n, d, f);
            var hidden = pass.Hidden[l] = new T[n * f];
            Ops<T>.SwiGlu(gate, up, hidden);
            var down = new T[n * d];
            Ops<T>.Linear(hidden, w.Down, [], down, n, f, d);
            for (int i = 0; i < x.Length; i++) x[i] += down[i];
        }
        pass.FinalInput = (T[])x.Clone();
        pass.FinalNormed = new T[n * d];
        Ops<T>.RmsNorm(x, weights.FinalNorm, pass.FinalNormed, n, d, epsilon);
        var logits = new T[n * c.VocabSize];
        Ops<T>.Linear(pass.FinalNormed, weights.Classifier, [], logits, n, d, c.VocabSize);
        _pass = pass;
        return logits;
    }

    /// <summary>
    /// Backward pass of the last <see cref="Forward"/> for <paramref name="dLogits"/> ([rows, vocab]): adds the gradient
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
            // Feed-forward: x_out = mid + down(swiglu(gate(norm(mid)), up(norm(mid)))).
            var dHidden = new T[n * f];
            Ops<T>.LinearBackward(pass.Hidden[l], w.Down, dx, dHidden, g?.Down ?? default, [], n, f, d);
            T[] dGate = new T[n * f], dUp = new T[n * f];
            Ops<T>.SwiGluBackward(pass.Gate[l], pass.Up[l], dHidden, dGate, dUp);
            var dFfnNormed = new T[n * d];
            Ops<T>.LinearBackward(pass.FfnNormed[l], w.Gate, dGate, dFfnNormed, g?.Gate ?? default, [], n, d, f);
            Ops<T>.LinearBackward(pass.FfnNormed[l], w.Up, dUp, dFfnNormed, g?.Up ?? default, [], n, d, f);
            Ops<T>.RmsNormBackward(pass.Mid[l], w.FfnNorm, dFfnNormed, dx, g?.FfnNorm ?? default, n, d, epsilon); // dx now d(mid)
            // Attention: mid = x_in + o(attention(rope(q), rope(k), v)).
            var dAttended = new T[n * q];
            Ops<T>.LinearBackward(pass.Attended[l], w.Output, dx, dAttended, g?.Output ?? default, [], n, q, d);
            T[] dq = new T[n * q], dk = new T[n * kv], dv = new T[n * kv];
            Ops<T>.AttentionBackward(pass.Q[l], pass.K[l], pass.V[l], pass.Probabilities[l], dAttended, dq, dk, dv, n, n, c.HeadCount, c.KvHeadCount, c.HeadDim);
            Ops<T>.Rope(dq, pass.Positions, _frequencies, c.HeadCount, c.HeadDim, interleaved, direction: -1);
            Ops<T>.Rope(dk, pass.Positions, _frequencies, c.KvHeadCount, c.HeadDim, interleaved, direction: -1);
            var dAttentionNormed = new T[n * d];
            Ops<T>.LinearBackward(pass.AttentionNormed[l], w.Query, dq, dAttentionNormed, g?.Query ?? default, g?.QueryBias ?? default, n, d, q);
            Ops<T>.LinearBackward(pass.AttentionNormed[l], w.Key, dk, dAttentionNormed, g?.Key ?? default, g?.KeyBias ?? default, n, d, kv);
            Ops<T>.LinearBackward(pass.AttentionNormed[l], w.Value, dv, dAttentionNormed, g?.Value ?? default, g?.ValueBias ?? default, n, d, kv);
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
    }
}
