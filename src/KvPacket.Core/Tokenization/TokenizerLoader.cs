namespace KvPacket.Core.Tokenization;

/// <summary>Opens a tokenizer file by what it contains, or finds the one that sits next to a checkpoint.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// Loads <paramref name="path"/>: a <c>tokenizer.json</c>, a SentencePiece <c>tokenizer.model</c> (protobuf) or a
    /// tiktoken <c>tokenizer.model</c> (lines of base64 and rank), or a directory holding one of them.
    /// </summary>
    public static ITokenizer Load(string path)
    {
        if (Directory.Exists(path))
            return FindIn(path) is { } found ? Load(found) : throw new FileNotFoundException($"No tokenizer.json or tokenizer.model in '{path}'.");
        if (!File.Exists(path)) throw new FileNotFoundException($"No tokenizer at '{path}'.", path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return ByteLevelBpeTokenizer.LoadHuggingFace(path);
        return LooksLikeTiktoken(path) ? ByteLevelBpeTokenizer.LoadTiktoken(path) : SentencePieceTokenizer.Load(path);
    }

    /// <summary>
    /// The tokenizer beside a checkpoint (its directory, or the directory of its file), else the one a GGUF checkpoint
    /// carries in its metadata, if there is one.
    /// </summary>
    public static ITokenizer? TryLoadNextTo(string checkpointPath) =>
        FileNextTo(checkpointPath) is { } found ? Load(found)
        : checkpointPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) && File.Exists(checkpointPath)
            ? Checkpoints.GgufVocabulary.TokenizerOf(checkpointPath, Checkpoints.GgufReader.ReadMetadata(checkpointPath))
            : null;

    /// <summary>The path of the tokenizer file beside a checkpoint (its directory, or the directory of its file), if there is one.</summary>
    public static string? FileNextTo(string checkpointPath) => FindIn(DirectoryOf(checkpointPath));

    /// <summary>The directory a checkpoint's companion files sit in: the checkpoint itself when it is a directory, else its file's.</summary>
    internal static string DirectoryOf(string checkpointPath) =>
        Directory.Exists(checkpointPath) ? checkpointPath : Path.GetDirectoryName(Path.GetFullPath(checkpointPath))!;

    private static string? FindIn(string directory) =>
        new[] { "tokenizer.json", "tokenizer.model" }.Select(name => Path.Combine(directory, name)).FirstOrDefault(File.Exists);

    /// <summary>A tiktoken file starts with a printable base64 token, a space and a decimal rank; a protobuf does not.</summary>
    private static bool LooksLikeTiktoken(string path)
    {
        using var reader = new StreamReader(path);
        var buffer = new char[256];
        int read = reader.ReadBlock(buffer, 0, buffer.Length);
        var line = buffer.AsSpan(0, read);
        int end = line.IndexOf('\n');
        if (end >= 0) line = line[..end];
        int space = line.IndexOf(' ');
        return space > 0 && line[(space + 1)..].TrimEnd('\r').ToString().All(char.IsAsciiDigit)
               && line[..space].ToString().All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '/' or '=');
    }
}
