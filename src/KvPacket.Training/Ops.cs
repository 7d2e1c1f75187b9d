using System.Numerics;
using System.Numerics.Tensors;

namespace KvPacket.Training;

/// <summary>
/// The transformer's operations with their backward passes, written once for any floating-point type: in float64 they
/// are the reference the gradient checks hold to 1e-6, in float32 the path training runs. Row-major matrices as flat
/// spans; every backward adds into its gradient outputs (so gradients of shared inputs accumulate) and allocates nothing.
/// </summary>
public static class Ops<T> where T : IFloatingPointIeee754<T>
{
    /// <summary>y[t, o] = Σ_i x[t, i]·w[o, i] (+ b[o]): x [tokens, in], w [out, in], y [tokens, out].</summary>
    public static void Linear(ReadOnlySpan<T> x, ReadOnlySpan<T> w, ReadOnlySpan<T> b, Span<T> y, int tokens, int inputs, int outputs)
    {
        for (int t = 0; t < tokens; t++)
        {
            var input = x.Slice(t * inputs, inputs);
            for (int o = 0; o < outputs; o++)
                y[t * outputs + o] = TensorPrimitives.Dot(input, w.Slice(o * inputs, inputs)) + (b.IsEmpty ? T.Zero : b[o]);
        }
    }

    /// <summary>dx += dy·w, dw += dyᵀ·x, db += Σ_t dy (any of the gradients may be empty: not wanted).</summary>
    public static void LinearBackward(ReadOnlySpan<T> x, ReadOnlySpan<T> w, ReadOnlySpan<T> dy, Span<T> dx, Span<T> dw, Span<T> db, int tokens, int inputs, int outputs)
    {
        for (int t = 0; t < tokens; t++)
            for (int o = 0; o < outputs; o++)
            {
                T g = dy[t * outputs + o];
                if (g == T.Zero) continue; // rows outside the loss have no gradient: most of them, for the classifier
                if (!db.IsEmpty) db[o] += g;
                if (!dx.IsEmpty)
                {
                    var target = dx.Slice(t * inputs, inputs);
                    TensorPrimitives.MultiplyAdd(w.Slice(o * inputs, inputs), g, target, target);
                }
                if (!dw.IsEmpty)
                {
                    var target = dw.Slice(o * inputs, inputs);
                    TensorPrimitives.MultiplyAdd(x.Slice(t * inputs, inputs), g, target, target);
                }
            }
    }

    /// <summary>y = x / rms(x) · w per row of <paramref name="width"/>; rms = sqrt(mean(x²) + ε).</summary>
    public static void RmsNorm(ReadOnlySpan<T> x, ReadOnlySpan<T> w, Span<T> y, int rows, int width, T epsilon)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * width, width);
            T inverse = InverseRms(row, epsilon);
            for (int i = 0; i < width; i++) y[r * width + i] = row[i] * inverse * w[i];
        }
    }

    /// <summary>dx += r·(w⊙dy) − x·r³/n·Σ(w⊙dy⊙x), dw += Σ_rows dy⊙x·r.</summary>
    public static void RmsNormBackward(ReadOnlySpan<T> x, ReadOnlySpan<T> w, ReadOnlySpan<T> dy, Span<T> dx, Span<T> dw, int rows, int width, T epsilon)
    {
        T n = T.CreateChecked(width);
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * width, width);
            var gradient = dy.Slice(r * width, width);
            T inverse = InverseRms(row, epsilon);
            T dot = T.Zero;
            for (int i = 0; i < width; i++) dot += w[i] * gradient[i] * row[i];
            T correction = inverse * inverse * inverse / n * dot;
            for (int i = 0; i < width; i++)
            {
                if (!dx.IsEmpty) dx[r * width + i] += inverse * w[i] * gradient[i] - row[i] * correction;
                if (!dw.IsEmpty) dw[i] += gradient[i] * row[i] * inverse;
            }
        }
    }

    private static T InverseRms(ReadOnlySpan<T> row, T epsilon)
    {
        T sum = T.Zero;
        foreach (T v in row) sum += v * v;
        return T.One / T.Sqrt(sum / T.CreateChecked(row.Length) + epsilon);
    }

    /// <summary>
    /// Rotates each head of each token by its position's angles (interleaved pairs (2i, 2i+1), or halves (i, i + d/2)):
    /// x [tokens, heads·d]; <paramref name="direction"/> −1 rotates back, which is also the backward pass (a rotation's
    /// transpose is its inverse).
    /// </summary>
    public static void Rope(Span<T> x, ReadOnlySpan<int> positions, ReadOnlySpan<double> inverseFrequencies, int heads, int headDim, bool interleaved, int direction = 1)
    {
        int half = headDim / 2;
        for (int t = 0; t < positions.Length; t++)
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((t * heads + h) * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    double angle = positions[t] * inverseFrequencies[i] * direction;
                    T c = T.CreateChecked(Math.Cos(angle)), s = T.CreateChecked(Math.Sin(angle));
                    int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
                    T va = v[a], vb = v[b];
                    v[a] = va * c - vb * s;
                    v[b] = va * s + vb * c;
                }
            }
    }

    /// <summary>
    /// Grouped-query attention with an explicit mask: out[t, h] = Σ_j p[t, h, j]·v[j, g(h)], p = softmax over the
    /// keys j that <paramref name="visible"/>(t, j) allows of q[t, h]·k[j, g(h)]·scale. q [tokens, heads·d],
    /// k and v [keys, kvHeads·d]; <paramref name="probabilities"/> [tokens, heads, keys] keeps p for the backward pass.
    /// </summary>
    public static void Attention(ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, Span<T> output, Span<T> probabilities,
        int tokens, int keys, int heads, int kvHeads, int headDim, Func<int, int, bool> visible)
    {
        T scale = T.One / T.Sqrt(T.CreateChecked(headDim));
        int group = heads / kvHeads, qWidth = heads * headDim, kvWidth = kvHeads * headDim;
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                var p = probabilities.Slice((t * heads + h) * keys, keys);
                T max = T.NegativeInfinity;
                for (int j = 0; j < keys; j++)
                {
                    if (!visible(t, j)) { p[j] = T.NegativeInfinity; continue; }
                    T dot = T.Zero;
                    for (int d = 0; d < headDim; d++) dot += q[t * qWidth + h * headDim + d] * k[j * kvWidth + g * headDim + d];
                    p[j] = dot * scale;
                    max = T.Max(max, p[j]);
                }
                T sum = T.Zero;
                for (int j = 0; j < keys; j++)
                {
                    p[j] = T.IsNegativeInfinity(p[j]) ? T.Zero : T.Exp(p[j] - max);
                    sum += p[j];
                }
                for (int j = 0; j < keys; j++) p[j] /= sum;
                for (int d = 0; d < headDim; d++)
                {
                    T acc = T.Zero;
                    for (int j = 0; j < keys; j++) acc += p[j] * v[j * kvWidth + g * headDim + d];
                    output[t * qWidth + h * headDim + d] = acc;
                }
            }
    }

    /// <summary>dq, dk, dv += the attention's gradients given dout and the forward pass's probabilities.</summary>
    public static void AttentionBackward(ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, ReadOnlySpan<T> probabilities, ReadOnlySpan<T> dOutput,
        Span<T> dq, Span<T> dk, Span<T> dv, int tokens, int keys, int heads, int kvHeads, int headDim)
    {
        T scale = T.One / T.Sqrt(T.CreateChecked(headDim));
        int group = heads / kvHeads, qWidth = heads * headDim, kvWidth = kvHeads * headDim;
        T[] rented = System.Buffers.ArrayPool<T>.Shared.Rent(keys);
        var dp = rented.AsSpan(0, keys);
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                var p = probabilities.Slice((t * heads + h) * keys, keys);
                var dout = dOutput.Slice(t * qWidth + h * headDim, headDim);
                // dp_j = dout · v_j;  ds_j = p_j (dp_j − Σ p dp)
                T weighted = T.Zero;
                for (int j = 0; j < keys; j++)
                {
                    T dot = T.Zero;
                    for (int d = 0; d < headDim; d++) dot += dout[d] * v[j * kvWidth + g * headDim + d];
                    dp[j] = dot;
                    weighted += p[j] * dot;
                }
                for (int j = 0; j < keys; j++)
                {
                    if (p[j] == T.Zero) continue;
                    T ds = p[j] * (dp[j] - weighted) * scale;
                    for (int d = 0; d < headDim; d++)
                    {
                        dv[j * kvWidth + g * headDim + d] += p[j] * dout[d];
                        dq[t * qWidth + h * headDim + d] += ds * k[j * kvWidth + g * headDim + d];
                        dk[j * kvWidth + g * headDim + d] += ds * q[t * qWidth + h * headDim + d];
                    }
                }
            }
        System.Buffers.ArrayPool<T>.Shared.Return(rented);
    }

    /// <summary>h = silu(gate)·up, elementwise.</summary>
    public static void SwiGlu(ReadOnlySpan<T> gate, ReadOnlySpan<T> up, Span<T> h)
    {
        for (int i = 0; i < h.Length; i++) h[i] = gate[i] / (T.One + T.Exp(-gate[i])) * up[i];
    }

    /// <summary>dgate += dh·up·silu′(gate), dup += dh·silu(gate); silu′(g) = σ(g)(1 + g(1 − σ(g))).</summary>
    public static void SwiGluBackward(ReadOnlySpan<T> gate, ReadOnlySpan<T> up, ReadOnlySpan<T> dh, Span<T> dgate, Span<T> dup)
    {
        for (int i = 0; i < dh.Length; i++)
        {
            T sigmoid = T.One / (T.One + T.Exp(-gate[i]));
            dup[i] += dh[i] * gate[i] * sigmoid;
            dgate[i] += dh[i] * up[i] * sigmoid * (T.One + gate[i] * (T.One - sigmoid));
        }
    }

    /// <summary>
    /// KL(teacher ‖ softmax(logits)) for one row, in nats, and its gradient with respect to the logits
    /// (softmax(logits) − teacher), added into <paramref name="dLogits"/> scaled by <paramref name="weight"/>.
    /// </summary>
    public static T KlDivergence(ReadOnlySpan<T> teacher, ReadOnlySpan<T> logits, Span<T> dLogits, T weight)
    {
        T max = T.NegativeInfinity;
        foreach (T l in logits) max = T.Max(max, l);
        T sum = T.Zero;
        foreach (T l in logits) sum += T.Exp(l - max);
        T logZ = max + T.Log(sum), kl = T.Zero;
        for (int i = 0; i < logits.Length; i++)
        {
            T logQ = logits[i] - logZ;
            if (teacher[i] > T.Zero) kl += teacher[i] * (T.Log(teacher[i]) - logQ);
            if (!dLogits.IsEmpty) dLogits[i] += weight * (T.Exp(logQ) - teacher[i]);
        }
        return kl;
    }
}
