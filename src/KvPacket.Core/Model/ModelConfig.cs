namespace KvPacket.Core.Model;

/// <summary>The shape and hyper-parameters of a Llama-family decoder (Llama 2/3, Qwen2).</summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name ("llama", "qwen2").</summary>
    public string Architecture { get; init; } = "llama";
    /// <summary>Residual stream width.</summary>
    public required int HiddenSize { get; init; }
    /// <summary>Width of the SwiGLU hidden layer.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary>Number of transformer blocks.</summary>
    public required int LayerCount { get; init; }
    /// <summary>Query heads.</summary>
    public required int HeadCount { get; init; }
    /// <summary>Key/value heads (fewer than <see cref="HeadCount"/> for grouped-query attention).</summary>
    public required int KvHeadCount { get; init; }
    /// <summary>Width of one head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Vocabulary size (rows of the embedding).</summary>
    public required int VocabSize { get; init; }
    /// <summary>Longest context the model was trained for; positions beyond it are rejected.</summary>
    public required int MaxContextLength { get; init; }
    /// <summary>RMSNorm epsilon.</summary>
    public double NormEpsilon { get; init; } = 1e-5;
    /// <summary>RoPE base.</summary>
    public double RopeTheta { get; init; } = 10000;
    /// <summary>Llama-3 frequency scaling, if the model uses it.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Per-frequency RoPE divisors, as a GGUF file carries Llama-3 scaling; applied after <see cref="RopeScaling"/>.</summary>
    public RopeFrequencyFactors? RopeFrequencyFactors { get; init; }
    /// <summary>Which dimensions RoPE pairs.</summary>
    public RopeStyle RopeStyle { get; init; } = RopeStyle.RotateHalf;
    /// <summary>Whether the classifier reuses the token embedding.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Whether q/k/v projections have biases (Qwen2).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Beginning-of-sequence token, if any.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>End-of-sequence tokens.</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Width of all query heads together.</summary>
    public int QueryDim => HeadCount * HeadDim;
    /// <summary>Width of all key (or value) heads together.</summary>
    public int KvDim => KvHeadCount * HeadDim;
    /// <summary>Query heads that share one key/value head.</summary>
    public int GroupSize => HeadCount / KvHeadCount;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent field.</summary>
    public void Validate(string source)
    {
        // Upper limits far above any real model, so an absurd count is an error and never an allocation.
        void InRange(int value, string field, int most)
        {
            if (value <= 0 || value > most) throw new CheckpointFormatException(source, field, $"must be in [1, {most}], got {value}");
        }
        InRange(HiddenSize, "hidden_size", 1 << 16);
        InRange(IntermediateSize, "intermediate_size", 1 << 20);
        InRange(LayerCount, "num_hidden_layers", 1024);
        InRange(HeadCount, "num_attention_heads", 1024);
        InRange(KvHeadCount, "num_key_value_heads", 1024);
        InRange(HeadDim, "head_dim", 1024);
        InRange(VocabSize, "vocab_size", 1 << 24);
        InRange(MaxContextLength, "max_position_embeddings", 1 << 24);
        if (HeadCount % KvHeadCount != 0)
            throw new CheckpointFormatException(source, "num_key_value_heads", $"{KvHeadCount} does not divide num_attention_heads {HeadCount}");
        if (HeadDim % 2 != 0) throw new CheckpointFormatException(source, "head_dim", $"must be even for RoPE, got {HeadDim}");
        if (!(NormEpsilon > 0 && NormEpsilon <= 0.1)) throw new CheckpointFormatException(source, "rms_norm_eps", $"must be in (0, 0.1], got {NormEpsilon}");
        if (!(RopeTheta > 0 && RopeTheta < 1e12)) throw new CheckpointFormatException(source, "rope_theta", $"must be in (0, 1e12), got {RopeTheta}");
        if (RopeFrequencyFactors is { } factors && (factors.Values.Length != HeadDim / 2 || factors.Values.Any(v => !(v > 0 && v < 1e9))))
            throw new CheckpointFormatException(source, "rope_freqs", $"needs {HeadDim / 2} positive finite factors (head_dim / 2), got {factors.Values.Length}");
        if (BosTokenId is int bos && (bos < 0 || bos >= VocabSize)) throw new CheckpointFormatException(source, "bos_token_id", $"{bos} is not below vocab_size {VocabSize}");
        foreach (int eos in EosTokenIds)
            if (eos < 0 || eos >= VocabSize) throw new CheckpointFormatException(source, "eos_token_id", $"{eos} is not below vocab_size {VocabSize}");
    }
}
