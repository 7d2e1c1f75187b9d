namespace KvPacket.Core.Model;

/// <summary>A checkpoint, config or model card is malformed: the message names the file and the field or tensor.</summary>
public sealed class CheckpointFormatException : Exception
{
    /// <summary>Creates the error for <paramref name="field"/> of <paramref name="file"/>.</summary>
    public CheckpointFormatException(string file, string field, string problem, Exception? inner = null)
        : base($"{file}: {field}: {problem}", inner)
    {
        File = file;
        Field = field;
    }

    /// <summary>The file that is malformed.</summary>
    public string File { get; }

    /// <summary>The header field, config key or tensor name that is wrong.</summary>
    public string Field { get; }
}
