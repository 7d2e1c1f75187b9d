using System.Numerics.Tensors;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Numerics;
using Xunit;

namespace KvPacket.Tests;

/// <summary>
/// <see cref="TokenDraw"/>'s radix selects against the rule written the obvious way: sort by logit (then id), keep the
/// first k, keep the sorted prefix whose weight reaches p of the whole, draw over the kept tokens in id order.
/// </summary>
public class TokenDrawTests
{
    [Theory]
    [InlineData(1000, 0)]     // distinct logits
    [InlineData(1000, 8)]     // eight values: long runs of ties at every cut
    [InlineData(50000, 64)]
    public void The_radix_selects_choose_what_sorting_chooses(int vocab, int levels)
    {
        var random = new SeededRandom((ulong)(vocab + levels));
        var logits = new float[vocab];
        var scratch = new TokenDraw.Scratch(vocab);
        (float T, int K, float P)[] rules = [(1f, 0, 1f), (0.7f, 40, 1f), (1f, 0, 0.9f), (0.8f, 50, 0.95f), (2f, 5, 0.5f), (1f, 1, 1f), (0.01f, 0, 0.9f),
            (1.3f, vocab - 1, 0.999f), (1f, 3, 1e-6f)];
        for (int row = 0; row < 12; row++)
        {
            for (int i = 0; i < vocab; i++)
                logits[i] = levels == 0 ? (random.NextSingle() - 0.5f) * 24 : (int)(random.NextSingle() * levels) * 0.75f - 3;
            foreach (var (t, k, p) in rules)
            {
                var (kept, keptWeights) = SortedKeep(logits, t, k, p);
                for (int d = 0; d < 40; d++)
                {
                    var draw = new TokenDraw(t, k, p, random.NextUInt64());
                    Assert.Equal(SortedDraw(kept, keptWeights, draw.Bits), draw.Choose(logits, scratch));
                }
            }
        }
    }

    [Fact]
    public void Draws_follow_the_kept_tokens_probabilities()
    {
        // Probabilities at T = 1 over these logits: 0.364 (id 1), 0.329 (5), 0.221 (2), 0.050 (0), 0.030 (4), 0.007 (3).
        float[] logits = [1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f];
        var scratch = new TokenDraw.Scratch(logits.Length);
        var random = new SeededRandom(17);
        const int Draws = 40000;
        var counts = new int[logits.Length];
        for (int i = 0; i < Draws; i++) counts[new TokenDraw(1f, 0, 0.9f, random.NextUInt64()).Choose(logits, scratch)]++;
        // top-p 0.9 keeps {1, 5, 2} (0.914); each is drawn in proportion to its probability among them.
        double kept = Math.Exp(3.0) + Math.Exp(2.9) + Math.Exp(2.5);
        Assert.Equal(Math.Exp(3.0) / kept, counts[1] / (double)Draws, 0.01);
        Assert.Equal(Math.Exp(2.9) / kept, counts[5] / (double)Draws, 0.01);
        Assert.Equal(Math.Exp(2.5) / kept, counts[2] / (double)Draws, 0.01);
        Assert.Equal(Draws, counts[1] + counts[5] + counts[2]);
    }

    [Fact]
    public void The_argmax_takes_the_lowest_id_of_a_tie_and_so_does_top_k_one()
    {
        float[] logits = [0.5f, 2f, -1f, 2f, 2f];
        var scratch = new TokenDraw.Scratch(logits.Length);
        Assert.Equal(1, TokenDraw.Greedy.Choose(logits, scratch));
        for (ulong bits = 0; bits < ulong.MaxValue - ulong.MaxValue / 7; bits += ulong.MaxValue / 7)
            Assert.Equal(1, new TokenDraw(3f, 1, 1f, bits).Choose(logits, scratch));
        // Top-k 2 keeps ids 1 and 3 of the three tied at 2: the last bits land on 3, never on 4.
        Assert.Equal(3, new TokenDraw(1f, 2, 1f, ulong.MaxValue).Choose(logits, scratch));
    }

    [Fact]
    public void Choosing_allocates_nothing()
    {
        var logits = Enumerable.Range(0, 4096).Select(i => MathF.Sin(i * 0.37f) * 6).ToArray();
        var scratch = new TokenDraw.Scratch(logits.Length);
        var draw = new TokenDraw(0.8f, 40, 0.9f, 12345);
        draw.Choose(logits, scratch);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) draw.Choose(logits, scratch);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    /// <summary>The rule by sorting (the specification TokenDraw's selects must meet): the kept ids in id order and their weights.</summary>
    private static (int[] Ids, ulong[] Weights) SortedKeep(float[] logits, float temperature, int topK, float topP)
    {
        // exp((x − max) · (1/T)) as the CPU computes it (TensorPrimitives' exp), in 2⁻⁴⁰ units.
        var exponentials = new float[logits.Length];
        TensorPrimitives.Subtract(logits, logits.Max(), exponentials);
        TensorPrimitives.Multiply(exponentials, 1f / temperature, exponentials);
        TensorPrimitives.Exp(exponentials, exponentials);
        ulong Weight(int i) => (ulong)(exponentials[i] * 1099511627776f);
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        int keep = topK > 0 ? Math.Min(topK, order.Length) : order.Length;
        if (topP < 1)
        {
            ulong total = 0;
            foreach (int i in order) total += Weight(i);
            ulong target = Math.Max(1, (ulong)((double)topP * total)), mass = 0;
            for (int j = 0; j < keep; j++)
            {
                mass += Weight(order[j]);
                if (mass >= target) { keep = j + 1; break; }
            }
        }
        var kept = order[..keep].Order().ToArray();
        return (kept, kept.Select(Weight).ToArray());
    }

    /// <summary>The draw by the rule: the ticket ⌊bits · W / 2⁶⁴⌋ walked over the kept tokens in id order.</summary>
    private static int SortedDraw(int[] kept, ulong[] weights, ulong bits)
    {
        ulong total = 0;
        foreach (ulong w in weights) total += w;
        ulong ticket = Math.BigMul(bits, total, out _), cumulative = 0;
        for (int j = 0; j < kept.Length; j++)
        {
            cumulative += weights[j];
            if (cumulative > ticket) return kept[j];
        }
        throw new InvalidOperationException("no token drawn");
    }
}
