using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Training.Cuda;

/// <summary>
/// The GPU distillation loss against the engine: for KV Packet and KVLink, an example's loss computed by the GPU
/// students must equal the KL between the teacher and the CPU engine's own prefill in that mode with the same adapter.
/// </summary>
public static class CudaDistillationCheck
{
    /// <summary>One mode's comparison.</summary>
    public sealed record Result(RagMode Mode, double EngineKl, double GpuLoss, double CpuLoss);

    /// <summary>Runs both modes on a fixed example of <paramref name="checkpoint"/> with a perturbed adapter.</summary>
    public static IReadOnlyList<Result> Run(Checkpoint checkpoint, DType operand)
    {
        using var transformer = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        int vocab = checkpoint.Config.VocabSize;
        int Token(int i) => 3 + (int)((uint)(i * 2654435761u) % (uint)(vocab - 3));
        int[][] documents = [[.. Enumerable.Range(0, 9).Select(Token)], [.. Enumerable.Range(20, 7).Select(Token)], [.. Enumerable.Range(40, 11).Select(Token)]];
        int[] continuation = [.. Enumerable.Range(60, 6).Select(Token)];
        var example = DistillationExample.Create(transformer, [checkpoint.Config.BosTokenId ?? 1], documents, continuation);
        var results = new List<Result>();
        foreach (var mode in new[] { RagMode.KvPacket, RagMode.KvLink })
        {
            var options = new DistillationOptions { Mode = mode, Header = 2, Trailer = 1, Links = 3, Device = TrainingDevice.Cuda, Operand = operand };
            var gpu = new AdapterDistillation(checkpoint, options);
            var start = gpu.Initial();
            float[] Perturbed(float[] rows) => [.. rows.Select((v, i) => v + 0.3f * MathF.Sin(i * 1.7f))];
            var adapter = start with { Header = Perturbed(start.Header), Trailer = Perturbed(start.Trailer), Links = Perturbed(start.Links) };
            using var engine = new RagEngine(transformer) { Adapter = adapter, QueryLogits = LogitsFor.AllTokens };
            var prefill = engine.Prefill(example.AsRequest(), mode);
            prefill.Sequence.Dispose();
            double kl = 0;
            for (int r = 0; r < continuation.Length; r++)
                kl += Ops<double>.KlDivergence([.. example.Teacher.AsSpan(r * vocab, vocab).ToArray().Select(v => (double)v)],
                    [.. prefill.QueryLogits.AsSpan(r * vocab, vocab).ToArray().Select(v => (double)v)], default, 1.0);
            double cpu = new AdapterDistillation(checkpoint, options with { Device = TrainingDevice.Cpu }).Loss(example, adapter);
            results.Add(new Result(mode, kl / continuation.Length, gpu.Loss(example, adapter), cpu));
        }
        return results;
    }
}
