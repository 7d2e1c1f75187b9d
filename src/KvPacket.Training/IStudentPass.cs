namespace KvPacket.Training;

/// <summary>
/// Where a distillation run computes its students' losses and adapter gradients (the CPU workers or the GPU); the
/// optimiser, the example order and the checkpoints stay with <see cref="AdapterDistillation"/>, the same for both.
/// </summary>
internal interface IStudentPass : IDisposable
{
    /// <summary>The batch's mean loss; the mean of its examples' adapter gradients written into <paramref name="gradients"/>.</summary>
    double Gradients(IReadOnlyList<DistillationExample> batch, float[] parameters, float[] gradients, out long rows);

    /// <summary>The mean of the examples' losses (each the mean KL per scored row).</summary>
    double MeanLoss(IReadOnlyList<DistillationExample> examples, float[] parameters);
}
