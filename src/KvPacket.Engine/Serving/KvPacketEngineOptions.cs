using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Engine.Serving;

/// <summary>How a <see cref="KvPacketEngine"/> is set up.</summary>
public sealed record KvPacketEngineOptions
{
    /// <summary>Model preparation on the CPU: KV cache size and type, batch limits, threads.</summary>
    public TransformerOptions Model { get; init; } = new();

    /// <summary>
    /// Where the model runs: null for the CPU <see cref="Transformer"/> prepared with <see cref="Model"/>; else a factory
    /// of another backend (a <c>CudaTransformer</c>), whose result the engine owns.
    /// </summary>
    public Func<Checkpoint, IForwardBackend>? Backend { get; init; }

    /// <summary>Batching limits.</summary>
    public SchedulerOptions Scheduler { get; init; } = new();

    /// <summary>The adapter for <see cref="RagMode.KvPacket"/> and <see cref="RagMode.KvLink"/> requests.</summary>
    public Adapter? Adapter { get; init; }

    /// <summary>Where packets come from (built in memory when null); created on the engine's scheduler thread, owned by the engine.</summary>
    public Func<IForwardBackend, IPacketSource>? Packets { get; init; }
}
