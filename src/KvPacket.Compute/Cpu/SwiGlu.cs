using System.Numerics.Tensors;

namespace KvPacket.Compute.Cpu;

/// <summary>The SwiGLU gate: gate ← silu(gate) · up, where silu(g) = g · σ(g).</summary>
public static class SwiGlu
{
    /// <summary>Overwrites <paramref name="gate"/> with silu(gate) · <paramref name="up"/>.</summary>
    public static void Apply(Span<float> gate, ReadOnlySpan<float> up)
    {
        // silu(g)·u = g·u / (1 + e^(−g)), computed as g·u·σ(g) with σ vectorised.
        Span<float> g = gate;
        Span<float> sigmoid = stackalloc float[1024];
        for (int i = 0; i < g.Length; i += 1024)
        {
            int n = Math.Min(1024, g.Length - i);
            TensorPrimitives.Sigmoid(g.Slice(i, n), sigmoid[..n]);
            TensorPrimitives.Multiply(g.Slice(i, n), sigmoid[..n], g.Slice(i, n));
        }
        TensorPrimitives.Multiply(g, up, g);
    }
}
