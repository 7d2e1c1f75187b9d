using KvPacket.Core.Numerics;

namespace KvPacket.Training;

/// <summary>
/// A token corpus for causal language modelling: a token file, one document (or example) per line, ids separated by
/// spaces or commas; each <c>|</c> switches the weighting of the tokens after it on or off (answers: their loss counts
/// <see cref="AnswerWeight"/> times; a line asking several questions weights each answer and none of the questions).
/// Read as one stream (each line preceded by BOS and followed by EOS when the model has them) cut into windows, or as
/// whole examples packed into sequences — each example attending only to itself, at positions from 0. What a step sees depends only on (seed, step, slot), so a resumed run sees exactly what an
/// uninterrupted one would.
/// </summary>
public sealed class PretrainingData
{
    private readonly int[] _stream;
    private readonly int[][] _lines;
    private readonly int[][] _switches;
    private readonly ulong _seed;

    private PretrainingData(int[] stream, int[][] lines, int[][] switches, ulong seed)
    {
        _stream = stream;
        _lines = lines;
        _switches = switches;
        _seed = seed;
    }

    /// <summary>Pack whole lines into sequences instead of cutting the stream into windows.</summary>
    public bool Examples { get; init; }

    /// <summary>The loss weight of a line's weighted tokens (answers), relative to 1 for the rest.</summary>
    public float AnswerWeight { get; init; } = 1;

    /// <summary>Lines read.</summary>
    public int Lines => _lines.Length;

    /// <summary>Tokens read.</summary>
    public long Tokens => _lines.Sum(l => (long)l.Length);

    /// <summary>Reads <paramref name="path"/>; ids must lie below <paramref name="vocab"/> (a bad one names its line).</summary>
    public static PretrainingData Read(string path, int vocab, int? bos, int? eos, ulong seed, bool examples = false, float answerWeight = 1)
    {
        var stream = new List<int>();
        var lines = new List<int[]>();
        var switches = new List<int[]>();
        var tokens = new List<int>();
        var switchAt = new List<int>();
        int line = 0;
        foreach (string text in File.ReadLines(path))
        {
            line++;
            tokens.Clear();
            switchAt.Clear();
            foreach (var range in text.AsSpan().SplitAny(" ,\t"))
            {
                var field = text.AsSpan(range);
                if (field.IsEmpty) continue;
                if (field is "|") { switchAt.Add(tokens.Count); continue; }
                if (!int.TryParse(field, out int id) || id < 0 || id >= vocab)
                    throw new InvalidDataException($"{path}:{line}: '{field}' is not a token id in [0, {vocab})");
                tokens.Add(id);
            }
            if (tokens.Count == 0) continue;
            if (!examples)
            {
                if (bos is int b) stream.Add(b);
                stream.AddRange(tokens);
                if (eos is int e) stream.Add(e);
            }
            lines.Add([.. tokens]);
            switches.Add([.. switchAt]);
        }
        return new PretrainingData([.. stream], [.. lines], [.. switches], seed) { Examples = examples, AnswerWeight = answerWeight };
    }

    /// <summary>The causal batch of step <paramref name="step"/>: <paramref name="sequences"/> windows of <paramref name="length"/> + 1 tokens.</summary>
    public TrainingBatch Batch(long step, int sequences, int length)
    {
        if (Examples) return PackedExamples(step, sequences, length);
        if (_stream.Length < length + 1) throw new InvalidOperationException($"the corpus has {_stream.Length} tokens; a window needs {length + 1}");
        var windows = new int[sequences][];
        for (int s = 0; s < sequences; s++)
        {
            var random = SeededRandom.ForSlot(_seed, step, s);
            long start = (long)(random.NextUInt64() % (ulong)(_stream.Length - length));
            windows[s] = _stream.AsSpan((int)start, length + 1).ToArray();
        }
        return TrainingBatch.Causal(windows);
    }

    /// <summary>Whole lines (examples) drawn in seeded order and packed into each sequence until the next does not fit.</summary>
    private TrainingBatch PackedExamples(long step, int sequences, int length)
    {
        var rows = new List<TrainingSequence>(sequences);
        for (int s = 0; s < sequences; s++)
        {
            var random = SeededRandom.ForSlot(_seed, step, s);
            var source = new List<int>(length);
            var first = new List<int>(length);
            var positions = new List<int>(length);
            var targets = new List<int>(length);
            var weights = new List<float>(length);
            for (int attempt = 0; attempt < 64; attempt++)
            {
                int e = (int)(random.NextUInt64() % (ulong)_lines.Length);
                var tokens = _lines[e];
                if (tokens.Length < 2) continue;
                if (source.Count + tokens.Length > length) { if (source.Count > 0) break; continue; }
                int start = source.Count;
                var switches = _switches[e];
                int passed = 0;
                for (int i = 0; i < tokens.Length; i++)
                {
                    while (passed < switches.Length && switches[passed] <= i + 1) passed++;   // switches at or before the predicted token
                    source.Add(tokens[i]);
                    first.Add(start);
                    positions.Add(i);
                    bool last = i + 1 == tokens.Length;
                    targets.Add(last ? -1 : tokens[i + 1]);
                    weights.Add(last ? 0 : passed % 2 == 1 ? AnswerWeight : 1);
                }
            }
            if (source.Count == 0) throw new InvalidOperationException($"no line of the corpus fits in {length} tokens");
            rows.Add(new TrainingSequence([.. source], [.. first], [.. targets], [.. weights]) { Positions = [.. positions] });
        }
        return TrainingBatch.Of(rows);
    }
}
