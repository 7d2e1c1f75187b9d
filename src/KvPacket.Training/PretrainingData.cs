using KvPacket.Core.Numerics;

namespace KvPacket.Training;

/// <summary>
/// A token corpus for causal language modelling: a token file (one document per line, ids separated by spaces or
/// commas) read into one stream, each document preceded by BOS and followed by EOS when the model has them. Windows
/// of length + 1 tokens start at seeded offsets that depend only on (seed, step, slot), so a resumed run sees exactly
/// the windows an uninterrupted one would.
/// </summary>
public sealed class PretrainingData
{
    private readonly int[] _stream;
    private readonly ulong _seed;

    private PretrainingData(int[] stream, ulong seed)
    {
        _stream = stream;
        _seed = seed;
    }

    /// <summary>Tokens in the stream.</summary>
    public long Tokens => _stream.Length;

    /// <summary>Reads <paramref name="path"/>; ids must lie below <paramref name="vocab"/> (a bad one names its line).</summary>
    public static PretrainingData Read(string path, int vocab, int? bos, int? eos, ulong seed)
    {
        var stream = new List<int>();
        int line = 0;
        foreach (string text in File.ReadLines(path))
        {
            line++;
            var fields = text.Split([' ', ',', '\t'], StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 0) continue;
            if (bos is int b) stream.Add(b);
            foreach (string field in fields)
            {
                if (!int.TryParse(field, out int id) || id < 0 || id >= vocab)
                    throw new InvalidDataException($"{path}:{line}: '{field}' is not a token id in [0, {vocab})");
                stream.Add(id);
            }
            if (eos is int e) stream.Add(e);
        }
        return new PretrainingData([.. stream], seed);
    }

    /// <summary>The causal batch of step <paramref name="step"/>: <paramref name="sequences"/> windows of <paramref name="length"/> + 1 tokens.</summary>
    public TrainingBatch Batch(long step, int sequences, int length)
    {
        if (_stream.Length < length + 1) throw new InvalidOperationException($"the corpus has {_stream.Length} tokens; a window needs {length + 1}");
        var windows = new int[sequences][];
        for (int s = 0; s < sequences; s++)
        {
            var random = new SeededRandom(_seed * 0x9E3779B97F4A7C15UL ^ ((ulong)step * 1_000_003UL + (ulong)s));
            long start = (long)(random.NextUInt64() % (ulong)(_stream.Length - length));
            windows[s] = _stream.AsSpan((int)start, length + 1).ToArray();
        }
        return TrainingBatch.Causal(windows);
    }
}
