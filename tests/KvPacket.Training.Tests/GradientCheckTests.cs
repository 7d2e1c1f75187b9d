using KvPacket.Training;
using Xunit;
using O = KvPacket.Training.Ops<double>;

namespace KvPacket.Training.Tests;

/// <summary>
/// Every op's backward pass against central finite differences in float64: the loss is a random projection of the op's
/// output, L = Σ y⊙r, so dL/dy = r; the analytic gradient of each input must match (L(x+h) − L(x−h)) / 2h to a relative
/// error ‖g − g_fd‖ / ‖g_fd‖ ≤ 1e-6.
/// </summary>
public class GradientCheckTests
{
    private const double Step = 1e-5, Tolerance = 1e-6;

    private static double[] Random(int n, int seed, double scale = 1)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (random.NextDouble() * 2 - 1) * scale).ToArray();
    }

    /// <summary>Checks <paramref name="analytic"/> (dL/dx) against finite differences of <paramref name="loss"/> over <paramref name="x"/>.</summary>
    private static void Check(string what, double[] x, double[] analytic, Func<double> loss)
    {
        var numeric = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double saved = x[i];
            x[i] = saved + Step;
            double plus = loss();
            x[i] = saved - Step;
            double minus = loss();
            x[i] = saved;
            numeric[i] = (plus - minus) / (2 * Step);
        }
        double difference = Math.Sqrt(numeric.Zip(analytic, (a, b) => (a - b) * (a - b)).Sum());
        double norm = Math.Sqrt(numeric.Sum(a => a * a));
        Assert.True(norm > 1e-8, $"{what}: the gradient is zero, the check proves nothing");
        Assert.True(difference / norm <= Tolerance, $"{what}: relative error {difference / norm:E2}");
    }

    private static double Dot(double[] a, double[] b) => a.Zip(b, (x, y) => x * y).Sum();

    [Fact]
    public void Linear()
    {
        const int tokens = 3, inputs = 5, outputs = 4;
        double[] x = Random(tokens * inputs, 1), w = Random(outputs * inputs, 2), b = Random(outputs, 3), r = Random(tokens * outputs, 4);
        double Loss()
        {
            var y = new double[tokens * outputs];
            O.Linear(x, w, b, y, tokens, inputs, outputs);
            return Dot(y, r);
        }
        double[] dx = new double[x.Length], dw = new double[w.Length], db = new double[b.Length];
        O.LinearBackward(x, w, r, dx, dw, db, tokens, inputs, outputs);
        Check("dx", x, dx, Loss);
        Check("dw", w, dw, Loss);
        Check("db", b, db, Loss);
    }

    [Fact]
    public void RmsNorm()
    {
        const int rows = 3, width = 8;
        double[] x = Random(rows * width, 5), w = Random(width, 6), r = Random(rows * width, 7);
        double Loss()
        {
            var y = new double[x.Length];
            O.RmsNorm(x, w, y, rows, width, 1e-5);
            return Dot(y, r);
        }
        double[] dx = new double[x.Length], dw = new double[w.Length];
        O.RmsNormBackward(x, w, r, dx, dw, rows, width, 1e-5);
        Check("dx", x, dx, Loss);
        Check("dw", w, dw, Loss);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Rope_both_styles(bool interleaved)
    {
        const int heads = 2, headDim = 8;
        int[] positions = [0, 3, 17];
        double[] frequencies = Enumerable.Range(0, headDim / 2).Select(i => Math.Pow(10000, -2.0 * i / headDim)).ToArray();
        double[] x = Random(positions.Length * heads * headDim, 8), r = Random(x.Length, 9);
        double Loss()
        {
            var y = (double[])x.Clone();
            O.Rope(y, positions, frequencies, heads, headDim, interleaved);
            return Dot(y, r);
        }
        var dx = (double[])r.Clone();
        O.Rope(dx, positions, frequencies, heads, headDim, interleaved, direction: -1);
        Check("dx", x, dx, Loss);
    }

    [Theory]
    [InlineData("causal")]
    [InlineData("packets")]
    public void Attention_with_gqa_and_masks(string mask)
    {
        const int tokens = 5, heads = 4, kvHeads = 2, headDim = 4;
        // "packets": tokens 0-1 are one packet and 2-3 another (each sees only itself), token 4 (the query) sees all.
        Func<int, int, bool> visible = mask == "causal" ? (t, j) => j <= t : (t, j) => j <= t && (t == 4 || t / 2 == j / 2);
        double[] q = Random(tokens * heads * headDim, 10), k = Random(tokens * kvHeads * headDim, 11), v = Random(k.Length, 12), r = Random(q.Length, 13);
        var probabilities = new double[tokens * heads * tokens];
        double Loss()
        {
            var output = new double[q.Length];
            O.Attention(q, k, v, output, probabilities, tokens, tokens, heads, kvHeads, headDim, visible);
            return Dot(output, r);
        }
        Loss();
        double[] dq = new double[q.Length], dk = new double[k.Length], dv = new double[v.Length];
        O.AttentionBackward(q, k, v, probabilities, r, dq, dk, dv, tokens, tokens, heads, kvHeads, headDim);
        Check("dq", q, dq, Loss);
        Check("dk", k, dk, Loss);
        Check("dv", v, dv, Loss);
    }

    [Fact]
    public void SwiGlu()
    {
        double[] gate = Random(12, 14, 3), up = Random(12, 15), r = Random(12, 16);
        double Loss()
        {
            var h = new double[gate.Length];
            O.SwiGlu(gate, up, h);
            return Dot(h, r);
        }
        double[] dgate = new double[gate.Length], dup = new double[up.Length];
        O.SwiGluBackward(gate, up, r, dgate, dup);
        Check("dgate", gate, dgate, Loss);
        Check("dup", up, dup, Loss);
    }

    [Fact]
    public void Kl_divergence_to_a_teacher()
    {
        double[] logits = Random(10, 17, 3), teacherLogits = Random(10, 18, 3);
        double[] teacher = teacherLogits.Select(Math.Exp).ToArray();
        double z = teacher.Sum();
        for (int i = 0; i < teacher.Length; i++) teacher[i] /= z;
        double Loss() => O.KlDivergence(teacher, logits, [], 1);
        var dLogits = new double[logits.Length];
        double kl = O.KlDivergence(teacher, logits, dLogits, 1);
        Assert.True(kl > 0);
        Check("dlogits", logits, dLogits, Loss);
        Assert.Equal(0, O.KlDivergence(teacher, teacherLogits, [], 1), 12); // KL of a distribution to itself
    }
}
