namespace KvPacket.Core.Diagnostics;

/// <summary>The rows of a serving trace: the scheduler's steps, packet loads, then one row per request.</summary>
public static class TraceTracks
{
    /// <summary>Scheduler steps (one span per forward batch).</summary>
    public const int Scheduler = 0;
    /// <summary>Packet loads from the store and builds.</summary>
    public const int Packets = 1;
    /// <summary>The first request's row; request n is on <c>FirstRequest + n</c>.</summary>
    public const int FirstRequest = 2;

    /// <summary>The names of the fixed rows, for <see cref="TraceRecorder"/>.</summary>
    public static string[] Names => ["scheduler", "packets"];
}
