using KvPacket.Core.Model;

namespace KvPacket.Core.Checkpoints;

/// <summary>Opens any supported checkpoint: a Hugging Face directory, a <c>.gguf</c> file or a llama2.c <c>.bin</c>.</summary>
public static class CheckpointLoader
{
    /// <summary>Loads <paramref name="path"/>, choosing the reader by what the path is and the file's magic.</summary>
    public static Checkpoint Load(string path)
    {
        if (Directory.Exists(path)) return HuggingFaceCheckpointReader.Read(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"No checkpoint at '{path}'.", path);
        if (Path.GetFileName(path) is "model.safetensors" or "config.json" or "model.safetensors.index.json")
            return HuggingFaceCheckpointReader.Read(Path.GetDirectoryName(Path.GetFullPath(path))!);
        Span<byte> magic = stackalloc byte[4];
        using (var stream = File.OpenRead(path)) magic = magic[..stream.Read(magic)];
        return magic.SequenceEqual("GGUF"u8) ? GgufReader.Read(path) : Llama2CCheckpointReader.Read(path);
    }
}
