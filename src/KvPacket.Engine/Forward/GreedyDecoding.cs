namespace KvPacket.Engine.Forward;

/// <summary>Greedy decoding of several prompts stepping together on any <see cref="IForwardBackend"/>.</summary>
public static class GreedyDecoding
{
    /// <summary>
    /// Prefills every prompt in one ragged step, then takes <paramref name="steps"/> greedy tokens for all of them at
    /// once. Returns each prompt's tokens and, in <paramref name="sequences"/>, the backend's sequences (the caller releases them).
    /// </summary>
    public static int[][] Run(IForwardBackend backend, int[][] prompts, int steps, out int[] sequences)
    {
        int vocab = backend.Config.VocabSize;
        int[] ids = sequences = [.. prompts.Select(_ => backend.CreateSequence())];
        var logits = new float[ids.Length * vocab];
        backend.Step(ids, [.. prompts.Select(p => p.Length)], [.. prompts.SelectMany(p => p)], default, logits);
        var output = ids.Select(_ => new int[steps]).ToArray();
        var next = new int[ids.Length];
        var ones = Enumerable.Repeat(1, ids.Length).ToArray();
        for (int step = 0; step < steps; step++)
        {
            for (int s = 0; s < ids.Length; s++) next[s] = output[s][step] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.AsSpan(s * vocab, vocab));
            backend.Step(ids, ones, next, default, logits);
        }
        return output;
    }
}
