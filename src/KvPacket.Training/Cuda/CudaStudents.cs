using KvPacket.Compute.Cuda;
using KvPacket.Core.Model;

namespace KvPacket.Training.Cuda;

/// <summary>
/// Distillation students on the GPU: a batch of examples becomes one <see cref="TrainingBatch"/> of student sequences
/// (<see cref="StudentLayout"/>, the CPU's masks and positions) run by a frozen <see cref="CudaTrainingModel"/> whose
/// only parameters are the adapter rows. Each example weighs 1/(scored rows) per row, the batch 1/(examples): the
/// CPU's mean of means.
/// </summary>
internal sealed class CudaStudents : IStudentPass
{
    private readonly CudaDevice _device;
    private readonly CudaTrainingModel _model;
    private readonly DistillationOptions _options;
    private readonly int _vocab, _batch;

    /// <summary>Sizes the GPU model for batches of <see cref="DistillationOptions.BatchSize"/> of the longest of <paramref name="examples"/>.</summary>
    public CudaStudents(ModelConfig config, TrainingWeights<float> weights, DistillationOptions options, IReadOnlyList<DistillationExample> examples)
    {
        _options = options;
        _vocab = config.VocabSize;
        _batch = options.BatchSize;
        int longest = examples.Max(e => Layout(e).Length), scored = examples.Max(e => e.ScoredRows);
        _device = CudaDevice.Open();
        try
        {
            _model = new CudaTrainingModel(_device, config, weights, new CudaTrainingOptions(options.Operand, TrainWeights: false, options.RecomputeActivations),
                _batch, longest, options.AdapterRows, new float[options.AdapterRows * config.HiddenSize], _batch * scored);
        }
        catch
        {
            _device.Dispose();
            throw;
        }
    }

    private StudentLayout Layout(DistillationExample e) => StudentLayout.Of(e, _options.Mode, _options.Header, _options.Trailer, _options.Links);

    private TrainingBatch Batch(IReadOnlyList<DistillationExample> examples, out long rows)
    {
        var layouts = examples.Select(Layout).ToList();
        rows = layouts.Sum(l => (long)l.Length);
        return TrainingBatch.Students(examples, layouts, _vocab);
    }

    public double Gradients(IReadOnlyList<DistillationExample> batch, float[] parameters, float[] gradients, out long rows)
    {
        _model.UploadSoft(parameters);
        double loss = _model.ForwardBackward(Batch(batch, out rows), 1.0 / batch.Count);
        _model.DownloadSoftGradients(gradients);
        _model.ZeroGradients();
        return loss;
    }

    public double MeanLoss(IReadOnlyList<DistillationExample> examples, float[] parameters)
    {
        _model.UploadSoft(parameters);
        double total = 0;
        for (int first = 0; first < examples.Count; first += _batch)
        {
            var chunk = examples.Skip(first).Take(_batch).ToList();
            total += _model.Loss(Batch(chunk, out _), 1.0);
        }
        return total / examples.Count;
    }

    public void Dispose()
    {
        _model.Dispose();
        _device.Dispose();
    }
}
