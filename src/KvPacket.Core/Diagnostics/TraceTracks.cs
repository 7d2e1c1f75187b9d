namespace KvPacket.Core.Diagnostics;

/// <summary>The rows of a serving trace: the scheduler's steps, packet loads, the steps' stages, then one row per request.</summary>
public static class TraceTracks
{
    /// <summary>Scheduler steps (one span per forward batch).</summary>
    public const int Scheduler = 0;
    /// <summary>Packet loads from the store and builds.</summary>
    public const int Packets = 1;
    /// <summary>
    /// Each step's stages (norms, products, attention, …: device time on a GPU), laid end to end from the step's start:
    /// how the step's time divides, summed over layers, not when each ran.
    /// </summary>
    public const int Stages = 2;
    /// <summary>The first request's row; request n is on <c>FirstRequest + n</c>.</summary>
    public const int FirstRequest = 3;

    /// <summary>The names of the fixed rows, for <see cref="TraceRecorder"/>.</summary>
    public static string[] Names => ["scheduler", "packets", "stages"];
}
