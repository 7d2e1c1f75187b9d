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

    /// <summary>Places <paramref name="packet"/> at the end; see <see cref="IForwardBackend.AppendPacket"/>.</summary>
    public void AppendPacket(Packet packet, int skip = 0, int keyOrigin = -1) => backend.AppendPacket(id, packet, skip, keyOrigin);

    /// <summary>Fresh blocks that appending <paramref name="tokens"/> computed tokens would take.</summary>
    public int BlocksNeededFor(int tokens) => backend.BlocksNeededFor(id, tokens);

    /// <summary>Takes <paramref name="source"/>'s prefix up to <paramref name="upTo"/>; see <see cref="IForwardBackend.SharePrefix"/>.</summary>
    public int SharePrefix(BackendSequence source, int upTo) => backend.SharePrefix(id, source.Id, upTo);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_released) return;
        _released = true;
        backend.ReleaseSequence(id);
    }
}
