using System.Text;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Token-by-token decoding that emits only complete characters: bytes of a character split across tokens are held
/// until the rest arrives. The concatenation of everything emitted (with <see cref="Flush"/>) equals
/// <see cref="ITokenizer.Decode"/> of the same ids. Allocates nothing per token.
/// </summary>
public sealed class TokenStreamDecoder
{
    private readonly ITokenizer _tokenizer;
    private readonly Decoder _utf8 = Encoding.UTF8.GetDecoder();
    private bool _atStart = true;

    /// <summary>Creates a decoder for <paramref name="tokenizer"/>.</summary>
    public TokenStreamDecoder(ITokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Most characters one token can produce into a destination (bytes + held bytes, each at most one char).</summary>
    public int MaxCharsPerToken(int id) => _tokenizer.TokenBytes(id).Length + 4;

    /// <summary>Feeds token <paramref name="id"/>; writes the characters it completes and returns how many.</summary>
    public int Append(int id, Span<char> destination)
    {
        if ((uint)id >= (uint)_tokenizer.VocabSize) throw new ArgumentOutOfRangeException(nameof(id), $"Token id {id} is outside the vocabulary of {_tokenizer.VocabSize}.");
        return Emit(_tokenizer.TokenBytes(id), destination, flush: false);
    }

    /// <summary>Ends the stream: held bytes that never completed a character become U+FFFD.</summary>
    public int Flush(Span<char> destination) => Emit([], destination, flush: true);

    /// <summary>Feeds token <paramref name="id"/> and returns its completed text (allocates; for convenience).</summary>
    public string Append(int id)
    {
        Span<char> buffer = stackalloc char[MaxCharsPerToken(id)];
        return new string(buffer[..Append(id, buffer)]);
    }

    private int Emit(ReadOnlySpan<byte> bytes, Span<char> destination, bool flush)
    {
        int written = _utf8.GetChars(bytes, destination, flush);
        if (_atStart && written > 0)
        {
            _atStart = false;
            if (_tokenizer.DecodeStripsLeadingSpace && destination[0] == ' ')
            {
                destination[1..written].CopyTo(destination);
                written--;
            }
        }
        return written;
    }
}
