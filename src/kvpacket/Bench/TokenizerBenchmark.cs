using System.Diagnostics;
using System.Text;
using KvPacket.Core.Numerics;
using KvPacket.Core.Tokenization;

namespace KvPacket.Cli.Bench;

/// <summary>
/// Encode throughput on 1 MB of generated text, English-like and mixed-script, and managed allocation per encode call
/// into a caller's buffer after a warm-up call. The text is made of random syllables so that most words are distinct
/// (a repeated sample would only measure the word cache).
/// </summary>
internal static class TokenizerBenchmark
{
    private static readonly string[] English = ["the", "an", "ing", "tion", "re", "con", "pro", "ver", "ly", "er", "st", "ch", "ous", "ment", "al",
        "in", "ex", "pl", "ain", "ight", "ould", "ed", "ow", "un", "th", "and", "ab", "om", "ist", "ure"];
    private static readonly string[] Mixed = ["при", "вет", "мир", "日本", "語", "の", "テキ", "スト", "中文", "分词", "한국", "어", "문장", "مرح", "با",
        "بال", "naï", "café", "Zü", "rich", "Ø", "😀", "🚀", "αβ", "γδ", "the", "ing", "12", "३४", "ไทย"];

    public static BenchResult Run(ITokenizer tokenizer, string name, int repeats)
    {
        var figures = new Dictionary<string, double>();
        foreach (var (label, syllables) in new[] { ("english", English), ("mixed", Mixed) })
        {
            string text = Generate(syllables, 1 << 20);
            double megabytes = Encoding.UTF8.GetByteCount(text) / 1e6;
            var ids = new int[Encoding.UTF8.GetByteCount(text) + 16];
            int count = tokenizer.Encode(text, ids); // warm-up: fills the word cache, JIT, buffer pools
            tokenizer.Encode(text, ids);
            var seconds = new List<double>();
            long allocated = 0;
            for (int r = 0; r < repeats; r++)
            {
                long bytes = GC.GetAllocatedBytesForCurrentThread();
                long start = Stopwatch.GetTimestamp();
                tokenizer.Encode(text, ids);
                double elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
                allocated = Math.Max(allocated, GC.GetAllocatedBytesForCurrentThread() - bytes);
                seconds.Add(elapsed);
            }
            seconds.Sort();
            figures[$"{label}_MB_per_s_median"] = megabytes / seconds[seconds.Count / 2];
            figures[$"{label}_tokens"] = count;
            figures[$"{label}_bytes_allocated_per_encode_after_warmup"] = allocated;

            // Text with other random words: most are not in the word cache yet.
            string cold = Generate(syllables, 1 << 20, seed: 99);
            long coldStart = Stopwatch.GetTimestamp();
            tokenizer.Encode(cold, ids);
            figures[$"{label}_MB_per_s_unseen_text"] = Encoding.UTF8.GetByteCount(cold) / 1e6 / Stopwatch.GetElapsedTime(coldStart).TotalSeconds;
        }
        return new BenchResult("tokenize", name, tokenizer.GetType().Name, "-", 1, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    private static string Generate(string[] syllables, int utf8Bytes, ulong seed = 5)
    {
        var random = new SeededRandom(seed);
        var builder = new StringBuilder();
        int bytes = 0;
        while (bytes < utf8Bytes)
        {
            int start = builder.Length;
            int parts = 1 + (int)(random.NextUInt64() % 4);
            if (random.NextUInt64() % 9 == 0) builder.Append(char.ToUpperInvariant(syllables[random.NextUInt64() % (ulong)syllables.Length][0]));
            for (int p = 0; p < parts; p++) builder.Append(syllables[random.NextUInt64() % (ulong)syllables.Length]);
            builder.Append((random.NextUInt64() % 12) switch { 0 => ", ", 1 => ". ", 2 => "\n", _ => " " });
            bytes += Encoding.UTF8.GetByteCount(builder.ToString(start, builder.Length - start));
        }
        return builder.ToString();
    }
}
