namespace KvPacket.Core.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ character map used by byte-level BPE vocabularies: printable Latin-1 bytes stand for
/// themselves and the other 68 bytes are shifted to U+0100 and up, so every token is a printable string.
/// </summary>
internal static class ByteLevelAlphabet
{
    public static readonly char[] ByteToChar = Build();

    private static char[] Build()
    {
        var map = new char[256];
        int shifted = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + shifted++);
        }
        return map;
    }

    /// <summary>The bytes a vocabulary string stands for, or null if it uses characters outside the alphabet.</summary>
    public static byte[]? ToBytes(string token)
    {
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            int c = token[i];
            if (c < 256 && ByteToChar[c] == c) bytes[i] = (byte)c;
            else if (c >= 256 && c < 256 + 68) bytes[i] = (byte)Array.IndexOf(ByteToChar, (char)c);
            else return null;
        }
        return bytes;
    }
}
