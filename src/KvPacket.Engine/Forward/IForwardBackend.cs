using KvPacket.Core.Model;

namespace KvPacket.Engine.Forward;

/// <summary>
/// A model that runs forward steps over sequences held in its own KV cache — the CPU <see cref="CpuBackend"/> or the
/// GPU <c>CudaTransformer</c>. One contract for both, so the same driver code (and the same tests) run on either.
/// </summary>
public interface IForwardBackend : IDisposable
{
    /// <summary>The model's shape.</summary>
    ModelConfig Config { get; }

    /// <summary>Starts an empty sequence and returns its handle.</summary>
    int CreateSequence();

    /// <summary>Frees sequence <paramref name="sequence"/>'s KV.</summary>
    void ReleaseSequence(int sequence);

    /// <summary>Tokens sequence <paramref name="sequence"/> holds.</summary>
    int SequenceLength(int sequence);

    /// <summary>
    /// One forward step over a ragged batch: chunk i appends <paramref name="lengths"/>[i] of <paramref name="tokens"/>
    /// (in order) to sequence <paramref name="sequences"/>[i]; row i of <paramref name="logits"/> ([chunks, vocab])
    /// receives the logits after chunk i's last token.
    /// </summary>
    void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, Span<float> logits);
}
