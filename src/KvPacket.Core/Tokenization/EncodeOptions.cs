namespace KvPacket.Core.Tokenization;

/// <summary>What <see cref="ITokenizer.Encode(System.ReadOnlySpan{char}, System.Span{int}, EncodeOptions)"/> adds around the text.</summary>
/// <param name="AddBos">Prepend the beginning-of-sequence token.</param>
/// <param name="AddEos">Append the end-of-sequence token.</param>
public readonly record struct EncodeOptions(bool AddBos = false, bool AddEos = false);
