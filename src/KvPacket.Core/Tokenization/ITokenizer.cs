namespace KvPacket.Core.Tokenization;

/// <summary>Text ↔ token ids for one vocabulary.</summary>
public interface ITokenizer
{
    /// <summary>Number of token ids.</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, if the vocabulary has one.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, if the vocabulary has one.</summary>
    int? EosId { get; }

    /// <summary>Special (control) tokens by text.</summary>
    IReadOnlyDictionary<string, int> SpecialTokens { get; }

    /// <summary>
    /// Encodes <paramref name="text"/> into <paramref name="destination"/> and returns the number of ids written.
    /// Allocates nothing once the tokenizer's word cache holds the text's words.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too short.</exception>
    int Encode(ReadOnlySpan<char> text, Span<int> destination, EncodeOptions options = default);

    /// <summary>Encodes <paramref name="text"/> into a new array.</summary>
    int[] Encode(string text, EncodeOptions options = default);

    /// <summary>The text of <paramref name="ids"/>; invalid UTF-8 becomes U+FFFD, never an exception.</summary>
    string Decode(ReadOnlySpan<int> ids);

    /// <summary>The bytes token <paramref name="id"/> stands for (before any leading-space rule of the decoder).</summary>
    ReadOnlySpan<byte> TokenBytes(int id);

    /// <summary>The vocabulary's piece for <paramref name="id"/> (as the tokenizer file spells it).</summary>
    string PieceOf(int id);

    /// <summary>Whether decoding drops one leading space (SentencePiece's dummy prefix).</summary>
    bool DecodeStripsLeadingSpace { get; }
}
