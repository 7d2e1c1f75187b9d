using System.Numerics.Tensors;

namespace KvPacket.Compute.Cpu;

/// <summary>Numerically stable softmax in place.</summary>
public static class Softmax
{
    /// <summary>Replaces <paramref name="values"/> with exp(v − max) / Σ exp(v − max).</summary>
    public static void Apply(Span<float> values)
    {
        float max = TensorPrimitives.Max(values);
        TensorPrimitives.Subtract(values, max, values);
        TensorPrimitives.Exp(values, values);
        TensorPrimitives.Divide(values, TensorPrimitives.Sum(values), values);
    }
}
