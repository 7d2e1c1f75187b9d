using System.Text.RegularExpressions;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Splits text into words before BPE with one regular expression, keeping everything (matches and the gaps between
/// them) as in Hugging Face's "Isolated" split behaviour. Matching is allocation-free (<see cref="Regex.EnumerateMatches(ReadOnlySpan{char})"/>).
/// </summary>
public sealed class PreTokenizer
{
    /// <summary>GPT-2's pattern (ByteLevel pre-tokenizer with use_regex).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>
    /// GPT-2's pattern with every digit a word of its own (a space stays with the digit after it): numbers are spelled
    /// digit by digit, so a model can compare and order them digit by digit instead of learning each number's token.
    /// </summary>
    public const string Gpt2DigitsPattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>The Llama-3 pattern (digits in runs of up to three).</summary>
    public const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>The Qwen2 pattern: Llama-3's with every digit a word of its own.</summary>
    public const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private readonly Regex? _regex;

    /// <summary>
    /// How long one match may run: patterns come from files, and a pattern with nested quantifiers can backtrack
    /// exponentially; ours are linear and take microseconds.
    /// </summary>
    public static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(1);

    /// <summary>A pre-tokenizer for <paramref name="pattern"/>; null keeps the text whole.</summary>
    /// <exception cref="ArgumentException">The pattern is not a valid regular expression.</exception>
    public PreTokenizer(string? pattern)
    {
        Pattern = pattern;
        _regex = pattern is null ? null : new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, MatchTimeout);
    }

    /// <summary>The pattern, or null for none.</summary>
    public string? Pattern { get; }

    /// <summary>Calls <paramref name="onWord"/> with each word of <paramref name="text"/> in order.</summary>
    public void Split<TState>(ReadOnlySpan<char> text, ref TState state, WordAction<TState> onWord) where TState : allows ref struct
    {
        if (_regex is null)
        {
            if (!text.IsEmpty) onWord(text, ref state);
            return;
        }
        int last = 0;
        try
        {
            foreach (var match in _regex.EnumerateMatches(text))
            {
                if (match.Index > last) onWord(text[last..match.Index], ref state);
                if (match.Length > 0) onWord(text.Slice(match.Index, match.Length), ref state);
                last = match.Index + match.Length;
            }
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new InvalidDataException($"the pre-tokenizer pattern '{Pattern}' ran past {MatchTimeout.TotalSeconds:F0} s on a {text.Length}-character text (a pattern that backtracks exponentially?)", e);
        }
        if (last < text.Length) onWord(text[last..], ref state);
    }

    /// <summary>Receives one pre-tokenized word.</summary>
    public delegate void WordAction<TState>(ReadOnlySpan<char> word, ref TState state) where TState : allows ref struct;
}
