using KvPacket.Engine.Sampling;
using Xunit;

namespace KvPacket.Tests;

public class SamplerTests
{
    private static readonly float[] Logits = [1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f];

    [Fact]
    public void Greedy_picks_the_argmax()
    {
        Assert.Equal(1, new Sampler(SamplingOptions.Greedy, Logits.Length).Sample(Logits));
    }

    [Fact]
    public void Top_k_of_one_is_greedy_at_any_temperature()
    {
        var sampler = new Sampler(new SamplingOptions { Temperature = 5f, TopK = 1, Seed = 3 }, Logits.Length);
        for (int i = 0; i < 200; i++) Assert.Equal(1, sampler.Sample(Logits));
    }

    [Fact]
    public void The_same_seed_gives_the_same_tokens_and_another_seed_does_not()
    {
        int[] Draw(ulong seed)
        {
            var sampler = new Sampler(new SamplingOptions { Temperature = 1f, Seed = seed }, Logits.Length);
            return Enumerable.Range(0, 64).Select(_ => sampler.Sample(Logits)).ToArray();
        }
        Assert.Equal(Draw(11), Draw(11));
        Assert.NotEqual(Draw(11), Draw(12));
    }

    [Fact]
    public void Top_k_and_top_p_never_leave_their_candidate_set()
    {
        var topK = new Sampler(new SamplingOptions { Temperature = 2f, TopK = 3, Seed = 5 }, Logits.Length);
        var topKSeen = Enumerable.Range(0, 2000).Select(_ => topK.Sample(Logits)).ToHashSet();
        Assert.Equal(new HashSet<int> { 1, 5, 2 }, topKSeen);

        // Probabilities at T = 1: token 1 ≈ 0.364, 5 ≈ 0.329, 2 ≈ 0.221; the nucleus of 0.65 is {1, 5}.
        var topP = new Sampler(new SamplingOptions { Temperature = 1f, TopP = 0.65f, Seed = 5 }, Logits.Length);
        var topPSeen = Enumerable.Range(0, 2000).Select(_ => topP.Sample(Logits)).ToHashSet();
        Assert.Equal(new HashSet<int> { 1, 5 }, topPSeen);
    }

    [Fact]
    public void Temperature_sampling_follows_the_softmax()
    {
        var sampler = new Sampler(new SamplingOptions { Temperature = 1f, Seed = 9 }, Logits.Length);
        var counts = new int[Logits.Length];
        const int Draws = 20000;
        for (int i = 0; i < Draws; i++) counts[sampler.Sample(Logits)]++;
        double z = Logits.Sum(l => Math.Exp(l));
        for (int i = 0; i < Logits.Length; i++) Assert.Equal(Math.Exp(Logits[i]) / z, counts[i] / (double)Draws, 0.015);
    }

    [Fact]
    public void Out_of_range_options_are_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { Temperature = -1 }, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopP = 0 }, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { TopK = -2 }, 4));
    }
}
