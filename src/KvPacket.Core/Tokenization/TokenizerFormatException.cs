namespace KvPacket.Core.Tokenization;

/// <summary>A tokenizer file is malformed: the message names the file and what is wrong in it.</summary>
public sealed class TokenizerFormatException(string file, string field, string problem, Exception? inner = null)
    : Exception($"{file}: {field}: {problem}", inner)
{
    /// <summary>The tokenizer file.</summary>
    public string File { get; } = file;

    /// <summary>The field, token or line that is wrong.</summary>
    public string Field { get; } = field;
}
