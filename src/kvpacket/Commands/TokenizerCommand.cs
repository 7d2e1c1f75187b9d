using System.CommandLine;
using System.Text.Json;
using KvPacket.Core.Tokenization;
using KvPacket.Training.Qa;

namespace KvPacket.Cli.Commands;

/// <summary>
/// <c>kvpacket tokenizer train</c>: a byte-level BPE vocabulary trained on a corpus (QA benchmark JSONL splits or text
/// files), written as a Hugging Face tokenizer.json; <c>kvpacket tokenizer samples</c>: sample strings with a tokenizer's
/// encodings, for <c>benchmarks/gpu/tokenizer_check.py</c> to compare with the Hugging Face library.
/// </summary>
internal static class TokenizerCommand
{
    /// <summary>BOS, EOS and padding, in this order (ids 0, 1, 2).</summary>
    public static readonly string[] SpecialTokens = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"];

    public static Command Create()
    {
        var corpus = new Argument<string[]>("corpus") { Description = "QA benchmark .jsonl splits or .txt files", Arity = ArgumentArity.OneOrMore };
        var vocab = new Option<int>("--vocab") { Description = "Vocabulary size (special tokens + 256 bytes + merges)", DefaultValueFactory = _ => 8192 };
        var output = new Option<string>("--out") { Description = "The tokenizer.json to write", Required = true };
        var minFrequency = new Option<int>("--min-frequency") { Description = "Stop merging below this pair count", DefaultValueFactory = _ => 2 };
        var digits = new Option<bool>("--split-digits") { Description = "Spell numbers digit by digit (GPT-2's pre-tokenizer with every digit a word)" };
        var train = new Command("train", "Train a byte-level BPE tokenizer and write tokenizer.json") { corpus, vocab, output, minFrequency, digits };
        train.SetAction(parse =>
        {
            var files = parse.GetValue(corpus)!;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            int merges = ByteLevelBpeTrainer.Train(Texts(files), parse.GetValue(vocab), SpecialTokens, parse.GetValue(output)!, parse.GetValue(minFrequency),
                parse.GetValue(digits) ? PreTokenizer.Gpt2DigitsPattern : null);
            var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(parse.GetValue(output)!);
            Console.WriteLine($"{parse.GetValue(output)}: {tokenizer.VocabSize} tokens ({merges} merges) from {files.Length} file(s) in {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        var sampleCorpus = new Argument<string[]>("corpus") { Description = "QA benchmark .jsonl splits or .txt files to take sample strings from", Arity = ArgumentArity.OneOrMore };
        var sampleTokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.json", Required = true };
        var sampleCount = new Option<int>("--count") { Description = "Sample strings", DefaultValueFactory = _ => 1000 };
        var samplesOut = new Option<string>("--out") { Description = "The JSONL file to write: {text, ids} per line", Required = true };
        var samples = new Command("samples", "Write sample strings with this tokenizer's ids, for an independent implementation to compare with") { sampleCorpus, sampleTokenizer, sampleCount, samplesOut };
        samples.SetAction(parse =>
        {
            var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(parse.GetValue(sampleTokenizer)!);
            int written = 0;
            using (var writer = new StreamWriter(parse.GetValue(samplesOut)!))
                foreach (string text in Samples(parse.GetValue(sampleCorpus)!).Take(parse.GetValue(sampleCount)))
                {
                    writer.WriteLine(JsonSerializer.Serialize(new { text, ids = tokenizer.Encode(text) }));
                    written++;
                }
            Console.WriteLine($"{parse.GetValue(samplesOut)}: {written} sample strings with our encodings");
            return 0;
        });
        var splitArgument = new Argument<string>("split") { Description = "A QA benchmark .jsonl split" };
        var tokenizerPath = new Option<string>("--tokenizer") { Description = "tokenizer.json", Required = true };
        var tokensOut = new Option<string>("--out") { Description = "The token file to write: one example per line, 'prompt ids | answer ids [| question ids | answer ids]…'", Required = true };
        var encode = new Command("encode", "Encode a QA split in the model's prompt format as a token file for kvpacket pretrain --examples") { splitArgument, tokenizerPath, tokensOut };
        encode.SetAction(parse =>
        {
            var tokenizer = ByteLevelBpeTokenizer.LoadHuggingFace(parse.GetValue(tokenizerPath)!);
            long tokens = 0;
            int lines = 0;
            using (var writer = new StreamWriter(parse.GetValue(tokensOut)!))
                foreach (var chunk in QaBenchmark.Read(parse.GetValue(splitArgument)!).Chunk(8192))
                {
                    // Encoded in parallel, written in order; '|' switches the answer weighting on before each answer and off after it.
                    var encoded = new string[chunk.Length];
                    var counts = new long[chunk.Length];
                    Parallel.For(0, chunk.Length, i =>
                    {
                        var segments = QaPrompt.TrainingLine(tokenizer, chunk[i]).ToList();
                        counts[i] = segments.Sum(s => s.Length);
                        encoded[i] = string.Join(" | ", segments.Select(s => string.Join(' ', s)));
                    });
                    foreach (string line in encoded) writer.WriteLine(line);
                    tokens += counts.Sum();
                    lines += chunk.Length;
                }
            Console.WriteLine($"{parse.GetValue(tokensOut)}: {lines} examples, {tokens} tokens ({(double)tokens / Math.Max(1, lines):F0} per example)");
            return 0;
        });
        return new Command("tokenizer", "Train tokenizers, encode corpora and write samples to check them against") { train, encode, samples };
    }

    /// <summary>The corpus's texts: every document, question and answer of a QA split in the prompt format, or each line of a text file.</summary>
    private static IEnumerable<string> Texts(IEnumerable<string> files)
    {
        foreach (string file in files)
        {
            if (file.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
                foreach (var example in QaBenchmark.Read(file))
                {
                    foreach (var document in example.Documents) yield return QaPrompt.DocumentText(document);
                    yield return QaPrompt.QuestionText(example.Question) + QaPrompt.AnswerText(example.Answers[0], example.Reasoning);
                    foreach (var followUp in example.FollowUps ?? []) yield return QaPrompt.QuestionText(followUp.Question) + QaPrompt.AnswerText(followUp.Answers[0], followUp.Reasoning);
                }
            else
                foreach (string line in File.ReadLines(file)) yield return line + "\n";
        }
    }

    /// <summary>Strings to compare encodings on: texts of the corpus, unseen mixed-script text, whitespace and digits.</summary>
    private static IEnumerable<string> Samples(IEnumerable<string> files)
    {
        string[] extra = ["", " ", "  two  spaces ", "tabs\tand\nnewlines\n\n", "naïve café — Ünïcödé ẞ", "Кириллица и 漢字 かな 한국어", "emoji 👩‍💻🎉", "numbers 1234567 3.14159 -42", "x" + new string('y', 300)];
        foreach (string s in extra) yield return s;
        foreach (string text in Texts(files)) yield return text;
    }
}
