using System.Runtime.ExceptionServices;

namespace KvPacket.Compute.Threading;

/// <summary>
/// A fixed set of worker threads for data-parallel kernels. <see cref="Run"/> hands out [0, count) in grains of about
/// an eighth of a thread's share, taken in turn by whichever thread is free (the caller is worker 0) — on a shared VM
/// one core often runs slower, and equal fixed halves made every kernel wait for it (decode +10% measured) — waits
/// for all of them, and allocates nothing: workers park on
/// spinning events so that back-to-back kernels in a decode step do not pay a kernel wake-up each time. A caller that
/// finds the workers busy runs its kernel alone on its own thread.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    private readonly Thread[] _threads;
    private readonly ManualResetEventSlim[] _start;
    private IParallelWork? _work;
    private int _count;
    private int _grain;
    private int _next;
    private int _pending;
    private volatile bool _stopping;
    private ExceptionDispatchInfo? _failure;

    /// <summary>Creates a pool of <paramref name="threadCount"/> threads including the caller's.</summary>
    public WorkerPool(int threadCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threadCount, 1);
        ThreadCount = threadCount;
        _threads = new Thread[threadCount - 1];
        _start = new ManualResetEventSlim[threadCount - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            _start[i] = new ManualResetEventSlim(false, spinCount: 2047);
            int worker = i + 1;
            _threads[i] = new Thread(() => Loop(worker)) { IsBackground = true, Name = $"kvpacket-worker-{worker}" };
            _threads[i].Start();
        }
    }

    /// <summary>A pool with one thread per processor, shared by everything in the process.</summary>
    public static WorkerPool Shared { get; } = new(Environment.ProcessorCount);

    /// <summary>Threads that execute work, the caller's included.</summary>
    public int ThreadCount { get; }

    /// <summary>Runs <paramref name="work"/> over items [0, <paramref name="count"/>) on all threads and waits.</summary>
    public void Run(IParallelWork work, int count)
    {
        if (count <= 0) return;
        if (ThreadCount == 1 || count == 1)
        {
            work.Execute(0, count, 0);
            return;
        }
        if (Interlocked.CompareExchange(ref _work, work, null) is not null)
        {
            // The workers are busy with another caller's kernel (two models stepping at once): run this one on the
            // calling thread rather than wait, as worker 0 of its own kernel instance.
            work.Execute(0, count, 0);
            return;
        }
        _count = count;
        _grain = Math.Max(1, count / (ThreadCount * 8));
        _next = 0;
        _failure = null;
        Volatile.Write(ref _pending, _threads.Length);
        foreach (var start in _start) start.Set();
        try
        {
            Execute(work, 0);
        }
        finally
        {
            var spin = new SpinWait();
            while (Volatile.Read(ref _pending) != 0) spin.SpinOnce(sleep1Threshold: -1);
            _work = null;
        }
        _failure?.Throw();
    }

    private void Execute(IParallelWork work, int worker)
    {
        int count = _count;
        if (count <= ThreadCount)
        {
            int start = (int)((long)count * worker / ThreadCount);
            int end = (int)((long)count * (worker + 1) / ThreadCount);
            if (start < end) work.Execute(start, end, worker);
            return;
        }
        int grain = _grain;
        for (int first; (first = Interlocked.Add(ref _next, grain) - grain) < count;)
            work.Execute(first, Math.Min(count, first + grain), worker);
    }

    private void Loop(int worker)
    {
        var start = _start[worker - 1];
        while (true)
        {
            start.Wait();
            start.Reset();
            if (_stopping) return;
            try
            {
                Execute(_work!, worker);
            }
            catch (Exception e)
            {
                _failure ??= ExceptionDispatchInfo.Capture(e);
            }
            Interlocked.Decrement(ref _pending);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _stopping = true;
        foreach (var start in _start) start.Set();
        foreach (var thread in _threads) thread.Join();
        foreach (var start in _start) start.Dispose();
    }
}
