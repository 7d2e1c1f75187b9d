using KvPacket.Core.Checkpoints;

namespace KvPacket.Tests;

/// <summary>GGUF files that carry only a vocabulary (and the llama keys llama.cpp needs to open them).</summary>
internal static class VocabularyFiles
{
    /// <summary>Writes <paramref name="vocabulary"/> into <c>vocab.gguf</c> in <paramref name="directory"/>, with no tensors.</summary>
    public static string WriteGguf(string directory, GgufVocabulary vocabulary)
    {
        string path = Path.Combine(directory, "vocab.gguf");
        var metadata = new List<KeyValuePair<string, object>>
        {
            new("general.architecture", "llama"), new("llama.context_length", 4096u), new("llama.embedding_length", 64u), new("llama.block_count", 1u),
            new("llama.feed_forward_length", 128u), new("llama.attention.head_count", 2u), new("llama.attention.layer_norm_rms_epsilon", 1e-5f),
        };
        metadata.AddRange(vocabulary.Metadata());
        GgufWriter.Write(path, metadata, []);
        return path;
    }
}
