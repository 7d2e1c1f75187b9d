using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Store;
using KvPacket.Tests;
using Xunit;
using Xunit.Abstractions;

namespace KvPacket.Training.Tests;

public class DistillationTests(ITestOutputHelper output)
{
    /// <summary>A story the model samples from BOS with <paramref name="seed"/>.</summary>
    private static int[] Story(Transformer model, ulong seed, int length)
    {
        var story = new List<int>();
        new Generator(model).Generate([1], new GenerationOptions { MaxNewTokens = length, StopTokens = [], Sampling = new SamplingOptions { Temperature = 1f, Seed = seed } }, story.Add);
        return [.. story];
    }

    private static List<DistillationExample> Examples(Transformer model, ulong firstSeed, int count)
    {
        ulong seed = firstSeed;
        return [.. Enumerable.Range(0, count).Select(_ =>
            DistillationExample.Create(model, [1], [Story(model, seed++, 24), Story(model, seed++, 24)], Story(model, seed++, 8)))];
    }

    private static double HeldOutKl(Transformer model, IReadOnlyList<DistillationExample> heldOut, Adapter adapter)
    {
        using var engine = new RagEngine(model) { Adapter = adapter };
        return ModeEvaluation.Run(model, engine, heldOut.Select(e => e.AsRequest()).ToArray(), [RagMode.KvPacket], 8)[0].MeanKl;
    }

    [Fact]
    public async Task A_short_seeded_run_lowers_held_out_kl_and_the_stored_adapter_reproduces_it()
    {
        using var checkpoint = CheckpointLoader.Load(SharedModels.PathOf("stories260K/stories260K.bin"));
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096, MaxBatchTokens = 128 });
        var train = Examples(model, 100, 12);
        var heldOut = Examples(model, 9000, 4); // seeds apart from training's
        var options = new DistillationOptions { Header = 2, Trailer = 2, Steps = 40, LearningRate = 0.05, WarmupSteps = 5, Seed = 3 };
        var distillation = new KvPacketDistillation(checkpoint, options);
        double before = HeldOutKl(model, heldOut, distillation.Initial());
        var trained = distillation.Train(train, (step, loss, rate) => { if (step % 5 == 0) output.WriteLine($"step {step}: loss {loss:F4}, lr {rate:F4}"); });
        double after = HeldOutKl(model, heldOut, trained);
        output.WriteLine($"held-out KL(full ‖ kvpacket): {before:F4} at initialisation → {after:F4} trained");
        Assert.True(after < before, $"training did not lower held-out KL: {before} → {after}");

        // Saved into a packet store and read back, the adapter gives the same held-out KL.
        using var temp = SharedModels.TempDirectory();
        var fingerprint = ModelFingerprint.Of(checkpoint);
        using (var store = PacketStore.Open(temp.Path)) await store.PutAdapterAsync(trained, fingerprint, checkpoint.Config.HiddenSize);
        using (var store = PacketStore.Open(temp.Path, new PacketStoreOptions { ReadOnly = true }))
        {
            var reloaded = store.GetAdapter("kvpacket", fingerprint)!;
            Assert.Equal(trained.Header, reloaded.Header);
            Assert.Equal(after, HeldOutKl(model, heldOut, reloaded));
        }
    }
}
