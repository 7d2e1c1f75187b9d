using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace KvPacket.Core.Tokenization;

/// <summary>
/// Trains a byte-level BPE vocabulary (GPT-2's scheme) on a corpus and writes it as a Hugging Face
/// <c>tokenizer.json</c>: special tokens first, then the 256 byte symbols, then merges in the order learned. Words come
/// from the GPT-2 pre-tokenizer regex (ByteLevel with its regex), or from another pattern (then written as a Split
/// before a ByteLevel without one, as Hugging Face spells Llama 3's); each step merges the most frequent adjacent pair
/// (ties: the smallest pair of ids, so the same corpus always gives the same file), counting only inside words and
/// updating only the words that hold the pair.
/// </summary>
public static class ByteLevelBpeTrainer
{
    /// <summary>Writes a tokenizer of at most <paramref name="vocabSize"/> tokens trained on <paramref name="texts"/> to <paramref name="path"/>.</summary>
    /// <param name="texts">The corpus.</param>
    /// <param name="vocabSize">Special tokens + 256 bytes + merges.</param>
    /// <param name="specialTokens">Tokens never split (BOS, EOS, …), ids 0.. in order.</param>
    /// <param name="path">The tokenizer.json to write.</param>
    /// <param name="minFrequency">Stop when the best pair occurs fewer times than this.</param>
    /// <param name="pattern">The pre-tokenizer's regex (null: GPT-2's; <see cref="PreTokenizer.Gpt2DigitsPattern"/> spells numbers digit by digit).</param>
    /// <returns>The number of merges learned.</returns>
    public static int Train(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specialTokens, string path, int minFrequency = 2, string? pattern = null)
    {
        int firstByte = specialTokens.Count, firstMerge = firstByte + 256;
        if (vocabSize < firstMerge) throw new ArgumentException($"a vocabulary of {vocabSize} cannot hold {specialTokens.Count} special tokens and 256 bytes", nameof(vocabSize));

        // Words with their counts, as byte-symbol ids.
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var regex = new Regex(pattern ?? PreTokenizer.Gpt2Pattern, RegexOptions.Compiled);
        foreach (string text in texts)
            foreach (Match m in regex.Matches(text))
                counts[m.Value] = counts.GetValueOrDefault(m.Value) + 1;
        var words = new List<int[]>(counts.Count);
        var frequency = new List<int>(counts.Count);
        foreach (var (word, count) in counts.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            words.Add([.. Encoding.UTF8.GetBytes(word).Select(b => firstByte + b)]);
            frequency.Add(count);
        }

        var pairCounts = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, HashSet<int>>();
        var queue = new PriorityQueue<long, (long NegativeCount, long Pair)>();
        static long Key(int a, int b) => (long)a << 32 | (uint)b;
        void Count(int w, int sign)
        {
            var symbols = words[w];
            for (int i = 0; i + 1 < symbols.Length; i++)
            {
                long key = Key(symbols[i], symbols[i + 1]);
                long total = pairCounts.GetValueOrDefault(key) + sign * frequency[w];
                pairCounts[key] = total;
                if (sign > 0)
                {
                    if (!pairWords.TryGetValue(key, out var set)) pairWords[key] = set = [];
                    set.Add(w);
                }
            }
        }
        for (int w = 0; w < words.Count; w++) Count(w, +1);
        foreach (var (key, total) in pairCounts) queue.Enqueue(key, (-total, key));

        var pieces = new List<string>(specialTokens);
        for (int b = 0; b < 256; b++) pieces.Add(ByteLevelAlphabet.ByteToChar[b].ToString());
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int id = firstByte; id < pieces.Count; id++) ids[pieces[id]] = id;
        var merges = new List<(string, string)>();
        while (pieces.Count < vocabSize && queue.TryDequeue(out long best, out var priority))
        {
            long current = pairCounts.GetValueOrDefault(best);
            if (-priority.NegativeCount != current) continue;   // stale: the pair's count changed after it was queued
            if (current < minFrequency) break;
            int a = (int)(best >> 32), b = (int)(uint)best;
            // Two merge paths can spell the same string ("ab"+"c", "a"+"bc"): they share one token.
            string spelled = pieces[a] + pieces[b];
            if (!ids.TryGetValue(spelled, out int merged))
            {
                ids[spelled] = merged = pieces.Count;
                pieces.Add(spelled);
            }
            merges.Add((pieces[a], pieces[b]));
            var touched = new HashSet<long>();
            foreach (int w in pairWords[best].Order().ToArray())
            {
                var symbols = words[w];
                bool present = false;
                for (int i = 0; i + 1 < symbols.Length; i++) present |= symbols[i] == a && symbols[i + 1] == b;
                if (!present) continue;
                Count(w, -1);
                var next = new List<int>(symbols.Length);
                for (int i = 0; i < symbols.Length; i++)
                {
                    if (i + 1 < symbols.Length && symbols[i] == a && symbols[i + 1] == b) { next.Add(merged); i++; }
                    else next.Add(symbols[i]);
                }
                words[w] = [.. next];
                Count(w, +1);
                for (int i = 0; i + 1 < next.Count; i++) touched.Add(Key(next[i], next[i + 1]));
                for (int i = 0; i + 1 < symbols.Length; i++) touched.Add(Key(symbols[i], symbols[i + 1]));
            }
            foreach (long key in touched)
                if (pairCounts.GetValueOrDefault(key) > 0) queue.Enqueue(key, (-pairCounts[key], key));
        }
        Write(path, pieces, specialTokens.Count, merges, pattern);
        return merges.Count;
    }

    private static void Write(string path, List<string> pieces, int specialCount, List<(string, string)> merges, string? pattern)
    {
        using var stream = File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        json.WriteStartObject();
        json.WriteString("version", "1.0");
        json.WriteNull("truncation");
        json.WriteNull("padding");
        json.WriteStartArray("added_tokens");
        for (int id = 0; id < specialCount; id++)
        {
            json.WriteStartObject();
            json.WriteNumber("id", id);
            json.WriteString("content", pieces[id]);
            json.WriteBoolean("single_word", false);
            json.WriteBoolean("lstrip", false);
            json.WriteBoolean("rstrip", false);
            json.WriteBoolean("normalized", false);
            json.WriteBoolean("special", true);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteNull("normalizer");
        if (pattern is null) WriteByteLevel(json, "pre_tokenizer", useRegex: true);
        else WriteSplitThenByteLevel(json, pattern);
        json.WriteNull("post_processor");
        WriteByteLevel(json, "decoder", useRegex: true);
        json.WriteStartObject("model");
        json.WriteString("type", "BPE");
        json.WriteNull("dropout");
        json.WriteNull("unk_token");
        json.WriteNull("continuing_subword_prefix");
        json.WriteNull("end_of_word_suffix");
        json.WriteBoolean("fuse_unk", false);
        json.WriteBoolean("byte_fallback", false);
        json.WriteBoolean("ignore_merges", false);
        json.WriteStartObject("vocab");
        for (int id = specialCount; id < pieces.Count; id++) json.WriteNumber(pieces[id], id);
        json.WriteEndObject();
        json.WriteStartArray("merges");
        foreach (var (left, right) in merges)
        {
            json.WriteStartArray();
            json.WriteStringValue(left);
            json.WriteStringValue(right);
            json.WriteEndArray();
        }
        json.WriteEndArray();
        json.WriteEndObject();
        json.WriteEndObject();
    }

    /// <summary>The pre-tokenizer as a Sequence: a Split on <paramref name="pattern"/> (matches kept as words), then ByteLevel without its regex.</summary>
    private static void WriteSplitThenByteLevel(Utf8JsonWriter json, string pattern)
    {
        json.WriteStartObject("pre_tokenizer");
        json.WriteString("type", "Sequence");
        json.WriteStartArray("pretokenizers");
        json.WriteStartObject();
        json.WriteString("type", "Split");
        json.WriteStartObject("pattern");
        json.WriteString("Regex", pattern);
        json.WriteEndObject();
        json.WriteString("behavior", "Isolated");
        json.WriteBoolean("invert", false);
        json.WriteEndObject();
        WriteByteLevel(json, null, useRegex: false);
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static void WriteByteLevel(Utf8JsonWriter json, string? name, bool useRegex)
    {
        if (name is null) json.WriteStartObject();
        else json.WriteStartObject(name);
        json.WriteString("type", "ByteLevel");
        json.WriteBoolean("add_prefix_space", false);
        json.WriteBoolean("trim_offsets", true);
        json.WriteBoolean("use_regex", useRegex);
        json.WriteEndObject();
    }
}
