using KvPacket.Core.Tokenization;
using KvPacket.Engine.Sampling;

namespace KvPacket.Daemon;

/// <summary>Log-probabilities in OpenAI's two shapes: the completions API's parallel lists, and chat's per-token objects with bytes.</summary>
internal static class OpenAiLogProbs
{
    /// <summary><c>{tokens, token_logprobs, top_logprobs, text_offset}</c>; offsets count from <paramref name="offset"/>.</summary>
    public static object Completion(IReadOnlyList<(int Token, TokenLogProbs LogProbs)> items, ITokenizer tokenizer, int offset = 0)
    {
        var strings = items.Select(i => tokenizer.Decode([i.Token])).ToArray();
        var offsets = new int[strings.Length];
        for (int i = 0; i < strings.Length; i++) (offsets[i], offset) = (offset, offset + strings[i].Length);
        return new
        {
            tokens = strings,
            token_logprobs = items.Select(i => i.LogProbs.LogProb),
            top_logprobs = items.Select(i =>
            {
                var top = new Dictionary<string, float>();
                for (int k = 0; k < i.LogProbs.TopTokens.Length; k++) top.TryAdd(tokenizer.Decode([i.LogProbs.TopTokens[k]]), i.LogProbs.TopLogProbs[k]);
                return top;
            }),
            text_offset = offsets,
        };
    }

    /// <summary><c>{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}</c>.</summary>
    public static object Chat(IReadOnlyList<(int Token, TokenLogProbs LogProbs)> items, ITokenizer tokenizer) => new
    {
        content = items.Select(i => new
        {
            token = tokenizer.Decode([i.Token]), logprob = i.LogProbs.LogProb, bytes = Bytes(tokenizer, i.Token),
            top_logprobs = i.LogProbs.TopTokens.Select((t, k) => new { token = tokenizer.Decode([t]), logprob = i.LogProbs.TopLogProbs[k], bytes = Bytes(tokenizer, t) }),
        }),
    };

    private static int[] Bytes(ITokenizer tokenizer, int token) => [.. tokenizer.TokenBytes(token).ToArray().Select(b => (int)b)];
}
