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

    [Fact]
    public void Logit_bias_and_penalties_change_greedy_choices_as_OpenAI_defines_them()
    {
        // Logits 3.0 (token 1), 2.9 (5), 2.5 (2): a bias of -0.2 on token 1 hands the argmax to token 5.
        var biased = new Sampler(new SamplingOptions { LogitBias = new Dictionary<int, float> { [1] = -0.2f } }, Logits.Length);
        Assert.Equal(5, biased.Sample(Logits));
        Assert.Equal(1, new Sampler(new SamplingOptions { LogitBias = new Dictionary<int, float> { [1] = -0.05f } }, Logits.Length).Sample(Logits));

        // Frequency 0.3 per previous choice: 1 (3.0); 5 (2.9 > 2.7); 1 (2.7 > 2.6); 5 (2.6 > 2.5 > 2.4); 2 (2.5 > 2.4 > 2.3).
        var frequency = new Sampler(new SamplingOptions { FrequencyPenalty = 0.3f }, Logits.Length);
        Assert.Equal([1, 5, 1, 5, 2], Enumerable.Range(0, 5).Select(_ => frequency.Sample(Logits)));
        // Presence 0.45 once per token ever chosen: 1; 5 (2.9 > 2.55); then 1 for good (2.55 > 2.5 > 2.45).
        var presence = new Sampler(new SamplingOptions { PresencePenalty = 0.45f }, Logits.Length);
        Assert.Equal([1, 5, 1, 1], Enumerable.Range(0, 4).Select(_ => presence.Sample(Logits)));

        // The logits themselves are left as they were, and steady-state sampling allocates nothing.
        var copy = (float[])Logits.Clone();
        var both = new Sampler(new SamplingOptions { Temperature = 0.7f, FrequencyPenalty = 0.5f, LogitBias = new Dictionary<int, float> { [3] = 4 }, Seed = 2 }, Logits.Length);
        both.Sample(copy);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) both.Sample(copy);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(Logits, copy);
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { LogitBias = new Dictionary<int, float> { [6] = 1 } }, Logits.Length));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions { PresencePenalty = 2.5f }, Logits.Length));
    }
}
