using KvPacket.Compute.Cuda;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Sampling;
using Xunit;

namespace KvPacket.Tests;

/// <summary>The same driver over <see cref="IForwardBackend"/> on each backend: CPU always, CUDA where there is a GPU.</summary>
public class ForwardBackendTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private static readonly int[][] Prompts = [[1, .. ReferenceModels.RandomTokens(6, 1)], [1, .. ReferenceModels.RandomTokens(19, 2)], [1, .. ReferenceModels.RandomTokens(11, 3)]];

    /// <summary>Greedy continuation of every prompt, all sequences stepping together; checks and frees the sequences.</summary>
    private static int[][] Greedy(IForwardBackend backend, int steps)
    {
        var output = GreedyDecoding.Run(backend, Prompts, steps, out int[] ids);
        for (int s = 0; s < ids.Length; s++)
        {
            Assert.Equal(Prompts[s].Length + steps, backend.SequenceLength(ids[s]));
            backend.ReleaseSequence(ids[s]);
        }
        return output;
    }

    [Fact]
    public void The_cpu_backend_batched_through_the_interface_generates_what_each_prompt_generates_alone()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 64 });
        var batched = Greedy(model, 24);
        for (int s = 0; s < Prompts.Length; s++)
        {
            var alone = new List<int>();
            new Generator(model).Generate(Prompts[s], new GenerationOptions { MaxNewTokens = 24, StopTokens = [], Sampling = SamplingOptions.Greedy }, alone.Add);
            Assert.Equal(alone, batched[s]);
        }
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);
    }

    [CudaFact]
    public void The_cuda_backend_through_the_same_interface_generates_what_the_cpu_backend_generates()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 64 });
        using var device = CudaDevice.Open();
        using var gpu = new CudaTransformer(checkpoint, device, DType.F32, DType.F32, maxTokens: 64, kvTokens: 2048);
        Assert.Equal(Greedy(model, 24), Greedy(gpu, 24));
    }
}
