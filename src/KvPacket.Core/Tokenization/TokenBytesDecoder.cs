using System.Buffers;
using System.Text;

namespace KvPacket.Core.Tokenization;

/// <summary>Whole-sequence decoding shared by the tokenizers: concatenate token bytes, decode UTF-8 with U+FFFD for invalid input.</summary>
internal static class TokenBytesDecoder
{
    public static string Decode(ITokenizer tokenizer, ReadOnlySpan<int> ids)
    {
        var buffer = new ArrayBufferWriter<byte>(Math.Max(16, ids.Length * 4));
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)tokenizer.VocabSize) throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary of {tokenizer.VocabSize}.");
            buffer.Write(tokenizer.TokenBytes(id));
        }
        string text = Encoding.UTF8.GetString(buffer.WrittenSpan);
        return tokenizer.DecodeStripsLeadingSpace && text.StartsWith(' ') ? text[1..] : text;
    }
}
