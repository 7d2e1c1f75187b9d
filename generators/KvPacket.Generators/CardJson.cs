using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace KvPacket.Generators;

/// <summary>
/// A small JSON reader for model cards (System.Text.Json is not available to a netstandard2.0 generator without
/// shipping it alongside): objects, arrays, strings, numbers, true, false, null. Errors carry the character offset.
/// </summary>
internal sealed class CardJson
{
    private readonly string _text;
    private int _at;

    private CardJson(string text) => _text = text;

    /// <summary>Parses <paramref name="text"/>: objects become dictionaries, numbers doubles, arrays lists.</summary>
    /// <exception cref="FormatException">Not valid JSON; the message names the offset.</exception>
    public static object? Parse(string text)
    {
        var reader = new CardJson(text);
        object? value = reader.Value();
        reader.SkipSpace();
        if (reader._at != text.Length) throw reader.Error("unexpected text after the value");
        return value;
    }

    private object? Value()
    {
        SkipSpace();
        if (_at >= _text.Length) throw Error("unexpected end of text");
        char c = _text[_at];
        switch (c)
        {
            case '{': return Object();
            case '[': return Array();
            case '"': return String();
            case 't': Literal("true"); return true;
            case 'f': Literal("false"); return false;
            case 'n': Literal("null"); return null;
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return Number();
                throw Error($"unexpected character '{c}'");
        }
    }

    private Dictionary<string, object?> Object()
    {
        var result = new Dictionary<string, object?>(StringComparer.Ordinal);
        _at++;
        SkipSpace();
        if (Peek('}')) { _at++; return result; }
        while (true)
        {
            SkipSpace();
            if (!Peek('"')) throw Error("expected a property name");
            string key = String();
            SkipSpace();
            Expect(':');
            result[key] = Value();
            SkipSpace();
            if (Peek(',')) { _at++; continue; }
            Expect('}');
            return result;
        }
    }

    private List<object?> Array()
    {
        var result = new List<object?>();
        _at++;
        SkipSpace();
        if (Peek(']')) { _at++; return result; }
        while (true)
        {
            result.Add(Value());
            SkipSpace();
            if (Peek(',')) { _at++; continue; }
            Expect(']');
            return result;
        }
    }

    private string String()
    {
        _at++;
        var builder = new StringBuilder();
        while (_at < _text.Length && _text[_at] != '"')
        {
            char c = _text[_at++];
            if (c != '\\') { builder.Append(c); continue; }
            if (_at >= _text.Length) break;
            char escape = _text[_at++];
            switch (escape)
            {
                case 'n': builder.Append('\n'); break;
                case 't': builder.Append('\t'); break;
                case 'r': builder.Append('\r'); break;
                case 'b': builder.Append('\b'); break;
                case 'f': builder.Append('\f'); break;
                case 'u':
                    if (_at + 4 > _text.Length) throw Error("truncated \\u escape");
                    builder.Append((char)int.Parse(_text.Substring(_at, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    _at += 4;
                    break;
                default: builder.Append(escape); break;
            }
        }
        Expect('"');
        return builder.ToString();
    }

    private double Number()
    {
        int start = _at;
        while (_at < _text.Length && "+-0123456789.eE".IndexOf(_text[_at]) >= 0) _at++;
        string token = _text.Substring(start, _at - start);
        if (!double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out double value)) throw Error($"'{token}' is not a number");
        return value;
    }

    private void Literal(string word)
    {
        if (string.CompareOrdinal(_text, _at, word, 0, word.Length) != 0) throw Error($"expected '{word}'");
        _at += word.Length;
    }

    private void SkipSpace()
    {
        while (_at < _text.Length && char.IsWhiteSpace(_text[_at])) _at++;
    }

    private bool Peek(char c) => _at < _text.Length && _text[_at] == c;

    private void Expect(char c)
    {
        if (!Peek(c)) throw Error($"expected '{c}'");
        _at++;
    }

    private FormatException Error(string what) => new FormatException($"{what} at offset {_at}");
}
