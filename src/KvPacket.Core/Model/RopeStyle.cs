namespace KvPacket.Core.Model;

/// <summary>How a checkpoint pairs the dimensions that RoPE rotates together.</summary>
public enum RopeStyle
{
    /// <summary>Adjacent pairs (x[2i], x[2i+1]): llama2.c and GGUF llama.</summary>
    Interleaved,
    /// <summary>Halves (x[i], x[i + d/2]): Hugging Face checkpoints.</summary>
    RotateHalf,
}
