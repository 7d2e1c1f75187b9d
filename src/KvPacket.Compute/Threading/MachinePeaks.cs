using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvPacket.Core.Memory;

namespace KvPacket.Compute.Threading;

/// <summary>
/// Measures this machine's rooflines on all threads of a pool: streaming read bandwidth and f32 FMA throughput.
/// Benchmarks divide their results by these, measured in the same run, rather than by a datasheet.
/// </summary>
public static unsafe class MachinePeaks
{
    /// <summary>
    /// Best of <paramref name="repeats"/> passes summing a buffer far larger than the caches, in bytes/s — each pass once
    /// with the hardware prefetchers alone and once asking for lines ahead into L2 as it reads, as the GEMVs do (on the
    /// AMD EPYC VMs the second read up to a third more: a roofline that left it out would flatter every kernel).
    /// </summary>
    public static double ReadBandwidth(WorkerPool pool, long bytes = 1L << 30, int repeats = 5)
    {
        using var buffer = new NativeBuffer<float>(bytes / 4);
        for (long i = 0; i < buffer.Length; i += 1024) buffer.Pointer[i] = 1; // fault the pages in
        StreamRead[] passes = [new(buffer.Pointer, buffer.Length, pool.ThreadCount, ask: false), new(buffer.Pointer, buffer.Length, pool.ThreadCount, ask: true)];
        double best = 0;
        for (int r = 0; r < repeats; r++)
            foreach (var work in passes)
            {
                long start = Stopwatch.GetTimestamp();
                pool.Run(work, pool.ThreadCount);
                best = Math.Max(best, buffer.Length * 4.0 / Stopwatch.GetElapsedTime(start).TotalSeconds);
            }
        return best;
    }

    /// <summary>Best of <paramref name="repeats"/> runs of independent FMA chains in registers, in FLOP/s (an FMA is 2).</summary>
    public static double FmaThroughput(WorkerPool pool, int repeats = 5)
    {
        var work = new FmaChains(10_000_000);
        double best = 0;
        for (int r = 0; r < repeats; r++)
        {
            long start = Stopwatch.GetTimestamp();
            pool.Run(work, pool.ThreadCount);
            best = Math.Max(best, work.FlopsPerThread * pool.ThreadCount / Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        return best;
    }

    /// <summary>Sums part i of <c>parts</c> equal parts of the buffer for each item i; <c>ask</c>: asking for the lines 8 KB ahead into L2 as it goes.</summary>
    private sealed class StreamRead(float* data, long length, int parts, bool ask) : IParallelWork
    {
        public float Sink;

        public void Execute(int start, int end, int worker)
        {
            for (int part = start; part < end; part++)
            {
                long first = length * part / parts, last = length * (part + 1) / parts;
                Sink += ask ? Sum<Asking>(data + first, last - first) : Sum<Plain>(data + first, last - first);
            }
        }

        private interface IAhead { static abstract void Ask(float* line); }

        private readonly struct Plain : IAhead { public static void Ask(float* line) { } }

        private readonly struct Asking : IAhead
        {
            [MethodImpl(MethodImplOptions.AggressiveInlining)]
            public static void Ask(float* line)
            {
                if (!Sse.IsSupported) return;
                for (int l = 0; l < 4; l++) Sse.Prefetch1(line + 2048 + 16 * l);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static float Sum<T>(float* p, long n) where T : struct, IAhead
        {
            Vector512<float> a = default, b = default, c = default, d = default;
            long i = 0;
            for (; i <= n - 64; i += 64)
            {
                T.Ask(p + i);
                a += Vector512.Load(p + i);
                b += Vector512.Load(p + i + 16);
                c += Vector512.Load(p + i + 32);
                d += Vector512.Load(p + i + 48);
            }
            float sum = Vector512.Sum(a + b + c + d);
            for (; i < n; i++) sum += p[i];
            return sum;
        }
    }

    private sealed class FmaChains(int iterations) : IParallelWork
    {
        public float Sink;

        public double FlopsPerThread => 2.0 * 16 * 12 * iterations;

        [MethodImpl(MethodImplOptions.NoInlining)]
        public void Execute(int start, int end, int worker)
        {
            var m = Vector512.Create(0.999999f);
            var s = Vector512.Create(1e-7f);
            Vector512<float> a0 = m, a1 = m, a2 = m, a3 = m, a4 = m, a5 = m, a6 = m, a7 = m, a8 = m, a9 = m, a10 = m, a11 = m;
            for (int i = 0; i < iterations; i++)
            {
                a0 = Vector512.FusedMultiplyAdd(a0, m, s); a1 = Vector512.FusedMultiplyAdd(a1, m, s);
                a2 = Vector512.FusedMultiplyAdd(a2, m, s); a3 = Vector512.FusedMultiplyAdd(a3, m, s);
                a4 = Vector512.FusedMultiplyAdd(a4, m, s); a5 = Vector512.FusedMultiplyAdd(a5, m, s);
                a6 = Vector512.FusedMultiplyAdd(a6, m, s); a7 = Vector512.FusedMultiplyAdd(a7, m, s);
                a8 = Vector512.FusedMultiplyAdd(a8, m, s); a9 = Vector512.FusedMultiplyAdd(a9, m, s);
                a10 = Vector512.FusedMultiplyAdd(a10, m, s); a11 = Vector512.FusedMultiplyAdd(a11, m, s);
            }
            Sink += Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
        }
    }
}
