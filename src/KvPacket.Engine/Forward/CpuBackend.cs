using KvPacket.Core.Model;

namespace KvPacket.Engine.Forward;

/// <summary>The CPU <see cref="Transformer"/> behind <see cref="IForwardBackend"/>: sequences by handle, steps through one reused batch.</summary>
public sealed class CpuBackend(Transformer model) : IForwardBackend
{
    private readonly List<Sequence?> _sequences = [];
    private readonly ForwardBatch _batch = new(model.Options.MaxBatchTokens, model.Options.MaxBatchSequences, model.Config.HiddenSize);

    /// <summary>The transformer underneath (packets, soft tokens and the RAG modes use it directly).</summary>
    public Transformer Model => model;

    /// <inheritdoc />
    public ModelConfig Config => model.Config;

    /// <inheritdoc />
    public int CreateSequence()
    {
        int id = _sequences.IndexOf(null);
        if (id < 0) { id = _sequences.Count; _sequences.Add(null); }
        _sequences[id] = model.CreateSequence();
        return id;
    }

    /// <inheritdoc />
    public void ReleaseSequence(int sequence)
    {
        _sequences[sequence]?.Dispose();
        _sequences[sequence] = null;
    }

    /// <inheritdoc />
    public int SequenceLength(int sequence) => Get(sequence).Length;

    /// <inheritdoc />
    public void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        _batch.Clear();
        int offset = 0;
        for (int chunk = 0; chunk < sequences.Length; chunk++)
        {
            _batch.Add(Get(sequences[chunk]), tokens.Slice(offset, lengths[chunk]));
            offset += lengths[chunk];
        }
        if (offset != tokens.Length) throw new ArgumentException($"The chunk lengths add up to {offset}, not {tokens.Length} tokens.", nameof(lengths));
        model.Forward(_batch, logits);
    }

    private Sequence Get(int sequence) =>
        (uint)sequence < (uint)_sequences.Count && _sequences[sequence] is { } s ? s : throw new ArgumentException($"No sequence {sequence}.", nameof(sequence));

    /// <summary>Releases every sequence (the transformer stays with its owner).</summary>
    public void Dispose()
    {
        foreach (var sequence in _sequences) sequence?.Dispose();
        _sequences.Clear();
    }
}
