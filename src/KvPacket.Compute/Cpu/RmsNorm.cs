using System.Runtime.CompilerServices;
using System.Numerics.Tensors;

namespace KvPacket.Compute.Cpu;

/// <summary>RMSNorm: y = x / sqrt(mean(x²) + ε) · weight.</summary>
public static class RmsNorm
{
    /// <summary>Normalises one row; <paramref name="output"/> may alias <paramref name="input"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(ReadOnlySpan<float> input, ReadOnlySpan<float> weight, float epsilon, Span<float> output)
    {
        float sumOfSquares = TensorPrimitives.SumOfSquares(input);
        float scale = 1f / MathF.Sqrt(sumOfSquares / input.Length + epsilon);
        TensorPrimitives.Multiply(input, scale, output);
        TensorPrimitives.Multiply(output, weight, output);
    }
}
