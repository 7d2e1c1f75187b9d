namespace KvPacket.Engine.Sampling;

/// <summary>
/// The log-probabilities around one generated token, from the model's distribution (the logits' log-softmax, before
/// temperature and truncation, as OpenAI reports them): the chosen token's, and the most likely tokens', best first.
/// </summary>
/// <param name="LogProb">log p of the chosen token.</param>
/// <param name="TopTokens">The most likely tokens, best first.</param>
/// <param name="TopLogProbs">Their log p, in the same order.</param>
public sealed record TokenLogProbs(float LogProb, int[] TopTokens, float[] TopLogProbs)
{
    /// <summary>Most alternatives a request may ask for.</summary>
    public const int MaxTop = 20;

    /// <summary>The log-probabilities of <paramref name="token"/> and the <paramref name="top"/> likeliest tokens of one row of <paramref name="logits"/>.</summary>
    public static TokenLogProbs Of(ReadOnlySpan<float> logits, int token, int top)
    {
        if ((uint)top > MaxTop) throw new ArgumentOutOfRangeException(nameof(top), top, $"between 0 and {MaxTop} alternatives");
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float x in logits) sum += Math.Exp(x - max);
        float logZ = max + (float)Math.Log(sum);
        // The top candidates by insertion into a short sorted list: top ≤ 20, so this beats sorting the vocabulary.
        var ids = new int[top];
        var values = new float[top];
        int count = 0;
        for (int i = 0; i < logits.Length && top > 0; i++)
        {
            float x = logits[i];
            if (count == top && x <= values[top - 1]) continue;
            int at = Math.Min(count, top - 1);
            while (at > 0 && values[at - 1] < x)
            {
                values[at] = values[at - 1];
                ids[at] = ids[at - 1];
                at--;
            }
            values[at] = x;
            ids[at] = i;
            if (count < top) count++;
        }
        for (int i = 0; i < top; i++) values[i] -= logZ;
        return new TokenLogProbs(logits[token] - logZ, ids, values);
    }
}
