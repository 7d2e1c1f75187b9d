namespace KvPacket.Core.Checkpoints;

/// <summary>The role of a tensor inside a transformer block.</summary>
public enum LayerTensor
{
    /// <summary>RMSNorm weight before attention.</summary>
    AttentionNorm,
    /// <summary>Query projection.</summary>
    Query,
    /// <summary>Key projection.</summary>
    Key,
    /// <summary>Value projection.</summary>
    Value,
    /// <summary>Attention output projection.</summary>
    Output,
    /// <summary>Query bias.</summary>
    QueryBias,
    /// <summary>Key bias.</summary>
    KeyBias,
    /// <summary>Value bias.</summary>
    ValueBias,
    /// <summary>RMSNorm weight before the feed-forward block.</summary>
    FfnNorm,
    /// <summary>SwiGLU gate projection.</summary>
    Gate,
    /// <summary>SwiGLU up projection.</summary>
    Up,
    /// <summary>SwiGLU down projection.</summary>
    Down,
}

/// <summary>How a checkpoint format names its tensors.</summary>
public sealed class TensorNames
{
    private readonly string _layerPrefix;
    private readonly Func<LayerTensor, string> _layerSuffix;

    private TensorNames(string embedding, string finalNorm, string classifier, string layerPrefix, Func<LayerTensor, string> layerSuffix)
    {
        Embedding = embedding;
        FinalNorm = finalNorm;
        Classifier = classifier;
        _layerPrefix = layerPrefix;
        _layerSuffix = layerSuffix;
    }

    /// <summary>Token embedding name.</summary>
    public string Embedding { get; }
    /// <summary>Final norm name.</summary>
    public string FinalNorm { get; }
    /// <summary>Untied classifier name.</summary>
    public string Classifier { get; }

    /// <summary>The name of <paramref name="role"/> in block <paramref name="layer"/>.</summary>
    public string Layer(int layer, LayerTensor role) => $"{_layerPrefix}{layer}.{_layerSuffix(role)}";

    /// <summary>Hugging Face transformers names (Llama, Qwen2); llama2.c tensors are given these names too.</summary>
    public static TensorNames HuggingFace { get; } = new("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.",
        role => role switch
        {
            LayerTensor.AttentionNorm => "input_layernorm.weight",
            LayerTensor.Query => "self_attn.q_proj.weight",
            LayerTensor.Key => "self_attn.k_proj.weight",
            LayerTensor.Value => "self_attn.v_proj.weight",
            LayerTensor.Output => "self_attn.o_proj.weight",
            LayerTensor.QueryBias => "self_attn.q_proj.bias",
            LayerTensor.KeyBias => "self_attn.k_proj.bias",
            LayerTensor.ValueBias => "self_attn.v_proj.bias",
            LayerTensor.FfnNorm => "post_attention_layernorm.weight",
            LayerTensor.Gate => "mlp.gate_proj.weight",
            LayerTensor.Up => "mlp.up_proj.weight",
            LayerTensor.Down => "mlp.down_proj.weight",
            _ => throw new ArgumentOutOfRangeException(nameof(role)),
        });

    /// <summary>GGUF (llama.cpp) names.</summary>
    public static TensorNames Gguf { get; } = new("token_embd.weight", "output_norm.weight", "output.weight", "blk.",
        role => role switch
        {
            LayerTensor.AttentionNorm => "attn_norm.weight",
            LayerTensor.Query => "attn_q.weight",
            LayerTensor.Key => "attn_k.weight",
            LayerTensor.Value => "attn_v.weight",
            LayerTensor.Output => "attn_output.weight",
            LayerTensor.QueryBias => "attn_q.bias",
            LayerTensor.KeyBias => "attn_k.bias",
            LayerTensor.ValueBias => "attn_v.bias",
            LayerTensor.FfnNorm => "ffn_norm.weight",
            LayerTensor.Gate => "ffn_gate.weight",
            LayerTensor.Up => "ffn_up.weight",
            LayerTensor.Down => "ffn_down.weight",
            _ => throw new ArgumentOutOfRangeException(nameof(role)),
        });
}
