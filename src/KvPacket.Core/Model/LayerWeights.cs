namespace KvPacket.Core.Model;

/// <summary>The weights of one transformer block. Bias views are absent unless the model has attention biases.</summary>
public sealed class LayerWeights
{
    /// <summary>RMSNorm before attention, [1, hidden].</summary>
    public required WeightTensor AttentionNorm { get; init; }
    /// <summary>Query projection, [heads·head_dim, hidden].</summary>
    public required WeightTensor Query { get; init; }
    /// <summary>Key projection, [kv_heads·head_dim, hidden].</summary>
    public required WeightTensor Key { get; init; }
    /// <summary>Value projection, [kv_heads·head_dim, hidden].</summary>
    public required WeightTensor Value { get; init; }
    /// <summary>Attention output projection, [hidden, heads·head_dim].</summary>
    public required WeightTensor Output { get; init; }
    /// <summary>Query bias, [1, heads·head_dim] (Qwen2).</summary>
    public WeightTensor QueryBias { get; init; }
    /// <summary>Key bias, [1, kv_heads·head_dim] (Qwen2).</summary>
    public WeightTensor KeyBias { get; init; }
    /// <summary>Value bias, [1, kv_heads·head_dim] (Qwen2).</summary>
    public WeightTensor ValueBias { get; init; }
    /// <summary>RMSNorm before the feed-forward block, [1, hidden].</summary>
    public required WeightTensor FfnNorm { get; init; }
    /// <summary>SwiGLU gate projection (w1), [intermediate, hidden].</summary>
    public required WeightTensor Gate { get; init; }
    /// <summary>SwiGLU up projection (w3), [intermediate, hidden].</summary>
    public required WeightTensor Up { get; init; }
    /// <summary>SwiGLU down projection (w2), [hidden, intermediate].</summary>
    public required WeightTensor Down { get; init; }

    /// <summary>The matrices, in the order a forward pass reads them.</summary>
    public IEnumerable<WeightTensor> Matrices => [Query, Key, Value, Output, Gate, Up, Down];
}
