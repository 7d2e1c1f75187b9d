namespace KvPacket.Engine.Forward;

/// <summary>A sequence in an <see cref="IForwardBackend"/>'s KV cache, by handle; disposing releases its KV.</summary>
public sealed class BackendSequence(IForwardBackend backend, int id) : IDisposable
{
    private bool _released;

    /// <summary>The backend holding the sequence.</summary>
    public IForwardBackend Backend => backend;

    /// <summary>The backend's handle.</summary>
    public int Id => id;

    /// <summary>Tokens whose K and V are in the cache.</summary>
    public int Length => backend.SequenceLength(id);

    /// <summary>The longest the sequence may grow.</summary>
    public int MaxLength => backend.MaxSequenceLength;

    /// <summary>Appends <paramref name="tokens"/>; see <see cref="IForwardBackend.Prefill"/>.</summary>
    public void Prefill(ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken) => backend.Prefill(id, tokens, logits, which);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_released) return;
        _released = true;
        backend.ReleaseSequence(id);
    }
}
