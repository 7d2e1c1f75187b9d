namespace KvPacket.Compute.Threading;

/// <summary>
/// A unit of data-parallel work: <see cref="Execute"/> handles items [start, end) on worker <c>worker</c>.
/// Kernels implement it on a long-lived object so that dispatching allocates nothing.
/// </summary>
public interface IParallelWork
{
    /// <summary>Processes items [<paramref name="start"/>, <paramref name="end"/>) on worker <paramref name="worker"/>.</summary>
    void Execute(int start, int end, int worker);
}
