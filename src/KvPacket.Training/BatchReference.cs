using System.Numerics;

namespace KvPacket.Training;

/// <summary>
/// The CPU reference for a <see cref="TrainingBatch"/>: its loss and gradients computed sequence by sequence with
/// <see cref="TrainingModel{T}"/> (whose ops are checked against float64 finite differences), the same sum the GPU
/// trainer computes — Σ_rows weight·loss · scale, with cross-entropy to a target or KL to a teacher row per row.
/// </summary>
public static class BatchReference<T> where T : IFloatingPointIeee754<T>
{
    /// <summary>
    /// Loss of <paramref name="batch"/> times <paramref name="scale"/>; adds its gradients into <paramref name="dWeights"/>
    /// (when given) and <paramref name="dSoft"/> ([adapter rows, hidden]) for the adapter rows <paramref name="soft"/>.
    /// </summary>
    public static double Run(Core.Model.ModelConfig config, TrainingWeights<T> weights, TrainingBatch batch, ReadOnlySpan<T> soft, double scale,
        TrainingWeights<T>? dWeights, Span<T> dSoft)
    {
        int n = batch.Length, d = config.HiddenSize, vocab = config.VocabSize;
        var model = new TrainingModel<T>(config, weights);
        double total = 0;
        var target = new T[vocab];
        for (int b = 0; b < batch.Sequences; b++)
        {
            var source = batch.Source.AsSpan(b * n, n);
            var tokens = new int[n];
            var adapterRows = new List<int>();
            for (int i = 0; i < n; i++)
            {
                tokens[i] = source[i] >= 0 ? source[i] : -1;
                if (source[i] < 0) adapterRows.Add(-1 - source[i]);
            }
            var softRows = new T[adapterRows.Count * d];
            for (int s = 0; s < adapterRows.Count; s++) soft.Slice(adapterRows[s] * d, d).CopyTo(softRows.AsSpan(s * d, d));
            int sequence = b;
            var logits = model.Forward(tokens, softRows, batch.Positions.AsSpan(b * n, n).ToArray(), (i, j) => batch.Visible(sequence, i, j));
            var dLogits = new T[logits.Length];
            for (int i = 0; i < n; i++)
            {
                int r = b * n + i;
                if (batch.Weights[r] == 0) continue;
                T weight = T.CreateChecked(batch.Weights[r] * scale);
                var row = logits.AsSpan(i * vocab, vocab);
                Array.Clear(target);
                if (batch.TeacherRows[r] >= 0)
                    for (int v = 0; v < vocab; v++) target[v] = T.CreateChecked(batch.Teacher[(long)batch.TeacherRows[r] * vocab + v]);
                else target[batch.Targets[r]] = T.One;
                // KL(target ‖ q) is cross-entropy for a one-hot target (its entropy is 0): one formula for both.
                total += double.CreateChecked(Ops<T>.KlDivergence(target, row, dLogits.AsSpan(i * vocab, vocab), weight)) * batch.Weights[r] * scale;
            }
            var dSoftRows = new T[softRows.Length];
            model.Backward(dLogits, dSoftRows, dWeights);
            for (int s = 0; s < adapterRows.Count; s++)
                for (int j = 0; j < d; j++) dSoft[adapterRows[s] * d + j] += dSoftRows[s * d + j];
        }
        return total;
    }
}
