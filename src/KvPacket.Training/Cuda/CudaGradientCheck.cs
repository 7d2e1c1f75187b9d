using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Rag;

namespace KvPacket.Training.Cuda;

/// <summary>
/// The GPU trainer's loss and gradients against the CPU reference (<see cref="BatchReference{T}"/> in float64) on the
/// same batch: a causal language-modelling batch, and a KV Packet student batch (adapter rows, per-packet masks, KL to a
/// teacher). Errors are norm-wise, ‖gpu − cpu‖ / ‖cpu‖ per tensor.
/// </summary>
public static class CudaGradientCheck
{
    /// <summary>One tensor's gradient agreement.</summary>
    public sealed record TensorError(string Name, double Relative, double CpuNorm);

    /// <summary>One batch's comparison.</summary>
    public sealed record Result(string Batch, DType Operand, bool Recompute, bool Flash, double CpuLoss, double GpuLoss, IReadOnlyList<TensorError> Errors)
    {
        /// <summary>The worst tensor.</summary>
        public TensorError Worst => Errors.MaxBy(e => e.Relative)!;
    }

    /// <summary>A layer's tensors in <see cref="ParameterLayout.LayerTensors.All"/> order, as reports and dumps name them.</summary>
    private static readonly string[] LayerTensorNames = ["attention_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down", "q_bias", "k_bias", "v_bias"];

    /// <summary>Adapter rows in the student batch: two header and two trailer rows.</summary>
    public const int StudentHeader = 2, StudentTrailer = 2;

    /// <summary>A seeded causal batch of <paramref name="sequences"/> random windows of <paramref name="length"/> + 1 tokens.</summary>
    public static TrainingBatch CausalBatch(ModelConfig config, int sequences, int length, ulong seed)
    {
        var random = new SeededRandom(seed);
        return TrainingBatch.Causal([.. Enumerable.Range(0, sequences).Select(_ => random.NextTokens(length + 1, 0, config.VocabSize))]);
    }

    /// <summary>A seeded KV Packet student batch: each example a BOS, two or three documents and a continuation, with a random teacher.</summary>
    public static TrainingBatch StudentBatch(ModelConfig config, int sequences, ulong seed)
    {
        var random = new SeededRandom(seed);
        var examples = new List<DistillationExample>();
        for (int b = 0; b < sequences; b++)
        {
            int[][] documents = [.. Enumerable.Range(0, 2 + b % 2).Select(_ => random.NextTokens(6 + (int)(random.NextUInt64() % 6), 3, config.VocabSize))];
            int[] continuation = random.NextTokens(6, 3, config.VocabSize);
            var teacher = new float[continuation.Length * config.VocabSize];
            for (int i = 0; i < teacher.Length; i++) teacher[i] = MathF.Exp(3 * random.NextSingle());
            for (int r = 0; r < continuation.Length; r++)
            {
                var row = teacher.AsSpan(r * config.VocabSize, config.VocabSize);
                float sum = System.Numerics.Tensors.TensorPrimitives.Sum<float>(row);
                System.Numerics.Tensors.TensorPrimitives.Divide(row, sum, row);
            }
            examples.Add(new DistillationExample([1], documents, continuation, teacher, FirstScoredRow: 2));
        }
        var layouts = examples.Select(e => StudentLayout.Of(e, RagMode.KvPacket, StudentHeader, StudentTrailer, 0)).ToList();
        return TrainingBatch.Students(examples, layouts, config.VocabSize);
    }

    /// <summary>Adapter rows for the student batch: random rows of the embedding's scale.</summary>
    public static float[] SoftRows(TrainingWeights<float> weights, int hidden, int rows, ulong seed)
    {
        var random = new SeededRandom(seed);
        double rms = Math.Sqrt(weights.Embedding.Average(v => (double)v * v));
        return [.. Enumerable.Range(0, rows * hidden).Select(_ => (float)((2 * random.NextSingle() - 1) * rms * Math.Sqrt(3)))];
    }

    /// <summary>
    /// Runs <paramref name="batch"/> on the CPU (float64) and on the GPU with full-weight gradients, and compares. With
    /// <paramref name="dump"/>, writes the model, batch and both gradients there for <c>benchmarks/gpu/torch_grad.py</c>.
    /// </summary>
    public static Result Run(CudaDevice device, Checkpoint checkpoint, string name, TrainingBatch batch, float[] soft, DType operand, bool recompute,
        TensorDump? dump = null, bool flash = true)
    {
        var config = checkpoint.Config;
        int softRows = soft.Length / config.HiddenSize;
        double scale = 1 / batch.TotalWeight;

        var cpuWeights = TrainingWeights<double>.From(checkpoint);
        var cpuGradients = cpuWeights.ZerosLike();
        var cpuSoft = new double[soft.Length];
        double cpuLoss = BatchReference<double>.Run(config, cpuWeights, batch, [.. soft.Select(v => (double)v)], scale, cpuGradients, cpuSoft);

        var weights = TrainingWeights<float>.From(checkpoint);
        using var gpu = new CudaTrainingModel(device, config, weights, new CudaTrainingOptions(operand, TrainWeights: true, recompute, flash),
            batch.Sequences, batch.Length, softRows, soft, Math.Max(1, batch.Teacher.Length / config.VocabSize));
        double gpuLoss = gpu.ForwardBackward(batch, scale);
        var gpuGradients = gpu.DownloadGradients();
        var gpuSoft = gpu.DownloadSoftGradients();

        if (dump is not null)
        {
            var layout = new ParameterLayout(config, softRows);
            if (!dump.Has("model")) dump.Add("model", Flatten(layout, weights, soft));
            if (!dump.Has("cpu_f64")) dump.Add("cpu_f64", Flatten(layout, cpuGradients.Convert<float>(), [.. cpuSoft.Select(v => (float)v)]));
            dump.Add($"gpu_{operand.ToString().ToLowerInvariant()}{(recompute ? "_recompute" : "")}{(gpu.FlashAttention ? "_flash" : "")}", Flatten(layout, gpuGradients, gpuSoft));
        }
        var errors = new List<TensorError> { Compare("embedding", gpuGradients.Embedding, cpuGradients.Embedding) };
        for (int l = 0; l < config.LayerCount; l++)
        {
            var g = gpuGradients.Layers[l];
            var c = cpuGradients.Layers[l];
            float[][] gs = [g.AttentionNorm, g.Query, g.Key, g.Value, g.Output, g.FfnNorm, g.Gate, g.Up, g.Down, g.QueryBias, g.KeyBias, g.ValueBias];
            double[][] cs = [c.AttentionNorm, c.Query, c.Key, c.Value, c.Output, c.FfnNorm, c.Gate, c.Up, c.Down, c.QueryBias, c.KeyBias, c.ValueBias];
            for (int i = 0; i < LayerTensorNames.Length; i++)
                if (cs[i].Length > 0) errors.Add(Compare($"layers.{l}.{LayerTensorNames[i]}", gs[i], cs[i]));
        }
        errors.Add(Compare("final_norm", gpuGradients.FinalNorm, cpuGradients.FinalNorm));
        if (!config.TiedEmbeddings) errors.Add(Compare("classifier", gpuGradients.Classifier, cpuGradients.Classifier));
        if (softRows > 0) errors.Add(Compare("adapter_rows", gpuSoft, cpuSoft));
        return new Result(name, operand, recompute, gpu.FlashAttention, cpuLoss, gpuLoss, errors);
    }

    /// <summary>A dump for <paramref name="batch"/> on <paramref name="checkpoint"/>'s model: the shape, the parameter layout and the batch as metadata.</summary>
    public static TensorDump Dump(string directory, Checkpoint checkpoint, TrainingBatch batch, int softRows)
    {
        var c = checkpoint.Config;
        var layout = new ParameterLayout(c, softRows);
        var dump = new TensorDump(directory);
        dump.Set("config", new
        {
            hidden = c.HiddenSize, heads = c.HeadCount, kv_heads = c.KvHeadCount, head_dim = c.HeadDim, layers = c.LayerCount, ffn = c.IntermediateSize,
            vocab = c.VocabSize, eps = c.NormEpsilon, inv_freq = Compute.Cpu.RotaryEmbedding.Frequencies(c), interleaved = c.RopeStyle == RopeStyle.Interleaved,
            tied = c.TiedEmbeddings, bias = c.AttentionBias,
        });
        var tensors = new Dictionary<string, long[]> { ["embedding"] = [layout.Embedding.Offset, c.VocabSize, c.HiddenSize] };
        for (int l = 0; l < c.LayerCount; l++)
        {
            var all = layout.Layers[l].All;
            long[][] shapes = [[c.HiddenSize], [c.QueryDim, c.HiddenSize], [c.KvDim, c.HiddenSize], [c.KvDim, c.HiddenSize], [c.HiddenSize, c.QueryDim], [c.HiddenSize],
                [c.IntermediateSize, c.HiddenSize], [c.IntermediateSize, c.HiddenSize], [c.HiddenSize, c.IntermediateSize], [c.QueryDim], [c.KvDim], [c.KvDim]];
            for (int i = 0; i < LayerTensorNames.Length; i++)
                if (all[i].Count > 0) tensors[$"layers.{l}.{LayerTensorNames[i]}"] = [all[i].Offset, .. shapes[i]];
        }
        tensors["final_norm"] = [layout.FinalNorm.Offset, c.HiddenSize];
        if (!c.TiedEmbeddings) tensors["classifier"] = [layout.Classifier.Offset, c.VocabSize, c.HiddenSize];
        if (softRows > 0) tensors["adapter_rows"] = [layout.Soft.Offset, softRows, c.HiddenSize];
        dump.Set("tensors", tensors);
        dump.Set("batch", new
        {
            sequences = batch.Sequences, length = batch.Length, source = batch.Source, positions = batch.Positions, first_visible = batch.FirstVisible,
            targets = batch.Targets, teacher_rows = batch.TeacherRows, weights = batch.Weights, scale = 1 / batch.TotalWeight,
        });
        if (batch.Teacher.Length > 0) dump.Add("teacher", batch.Teacher);
        return dump;
    }

    private static float[] Flatten(ParameterLayout layout, TrainingWeights<float> weights, float[] soft)
    {
        var flat = new float[layout.Count];
        foreach (var (tensor, values) in layout.Pair(weights)) values.CopyTo(flat, tensor.Offset);
        soft.CopyTo(flat, layout.Soft.Offset);
        return flat;
    }

    private static TensorError Compare(string name, float[] gpu, double[] cpu)
    {
        double difference = 0, norm = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            difference += (gpu[i] - cpu[i]) * (gpu[i] - cpu[i]);
            norm += cpu[i] * cpu[i];
        }
        return new TensorError(name, norm == 0 ? Math.Sqrt(difference) : Math.Sqrt(difference / norm), Math.Sqrt(norm));
    }
}
