using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using Xunit;

namespace KvPacket.Tests;

public class BatchEquivalenceTests
{
    /// <summary>
    /// Four sequences of different lengths: two are prefilled first, then one step mixes their decode tokens with the
    /// other two sequences' prefill chunks. Every logit must equal running each sequence alone, bit for bit: the kernels
    /// sum in the same order whatever the batch.
    /// </summary>
    [Theory]
    [InlineData("stories260K/stories260K.bin")]
    [InlineData("tiny-qwen2")]
    public void A_mixed_prefill_and_decode_batch_gives_the_same_logits_as_each_sequence_alone(string model)
    {
        using var checkpoint = CheckpointLoader.Load(Fixtures.PathOf(model));
        int vocab = checkpoint.Config.VocabSize;
        int[][] prompts = [[1, 306, 462, 435, 264, 362, 327], [1, 441, 390], [1, 354, 360, 372, 454, 315, 283, 412, 334, 446, 330, 318, 462, 429, 293, 408, 477, 295, 295], [1]];
        int[] next = [341, 277, 356, 300];

        // Alone: each sequence prefilled, then one decode step.
        var alone = new float[4][];
        var options = new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 };
        using (var transformer = new Transformer(checkpoint, options))
        {
            var batch = new ForwardBatch(64, 4);
            for (int s = 0; s < 4; s++)
            {
                using var sequence = transformer.CreateSequence();
                var prefill = new float[prompts[s].Length * vocab];
                batch.Clear();
                batch.Add(sequence, prompts[s], LogitsFor.AllTokens);
                transformer.Forward(batch, prefill);
                var decode = new float[vocab];
                batch.Clear();
                batch.Add(sequence, [next[s]]);
                transformer.Forward(batch, decode);
                alone[s] = [.. prefill, .. decode];
            }
        }

        // Together: sequences 0 and 1 prefilled in one step; then a step with their decode tokens and the prefill of 2 and 3;
        // then a step with the decode tokens of 2 and 3.
        using (var transformer = new Transformer(checkpoint, options))
        {
            var sequences = Enumerable.Range(0, 4).Select(_ => transformer.CreateSequence()).ToArray();
            var batch = new ForwardBatch(64, 4);
            batch.Add(sequences[0], prompts[0], LogitsFor.AllTokens);
            batch.Add(sequences[1], prompts[1], LogitsFor.AllTokens);
            var step1 = new float[batch.LogitRowCount * vocab];
            transformer.Forward(batch, step1);

            batch.Clear();
            batch.Add(sequences[2], prompts[2], LogitsFor.AllTokens);
            batch.Add(sequences[0], [next[0]]);
            batch.Add(sequences[3], prompts[3], LogitsFor.AllTokens);
            batch.Add(sequences[1], [next[1]]);
            var step2 = new float[batch.LogitRowCount * vocab];
            transformer.Forward(batch, step2);

            batch.Clear();
            batch.Add(sequences[3], [next[3]]);
            batch.Add(sequences[2], [next[2]]);
            var step3 = new float[batch.LogitRowCount * vocab];
            transformer.Forward(batch, step3);

            int p0 = prompts[0].Length, p1 = prompts[1].Length, p2 = prompts[2].Length;
            AssertClose(alone[0], [.. step1.AsSpan(0, p0 * vocab), .. step2.AsSpan(p2 * vocab, vocab)]);
            AssertClose(alone[1], [.. step1.AsSpan(p0 * vocab, p1 * vocab), .. step2.AsSpan((p2 + 2) * vocab, vocab)]);
            AssertClose(alone[2], [.. step2.AsSpan(0, p2 * vocab), .. step3.AsSpan(vocab, vocab)]);
            AssertClose(alone[3], [.. step2.AsSpan((p2 + 1) * vocab, vocab), .. step3.AsSpan(0, vocab)]);
            foreach (var s in sequences) s.Dispose();
            Assert.Equal(transformer.KvPool.BlockCount, transformer.KvPool.FreeBlockCount);
        }
    }

    private static void AssertClose(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(expected[i] == actual[i], $"logit {i}: alone {expected[i]}, batched {actual[i]}");
    }
}
