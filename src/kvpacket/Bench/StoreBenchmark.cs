using System.Diagnostics;
using System.Runtime.InteropServices;
using KvPacket.Compute.Kv;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Store;

namespace KvPacket.Cli.Bench;

/// <summary>
/// The packet store end to end on one model card's KV shape (f16 pages, random values):
/// <list type="bullet">
/// <item>ingest: packets/s and GB/s with a durable commit per packet, and with group commits of 8;</item>
/// <item>load: GB/s of packets read from the OS page cache into KV blocks (checksums checked) with the worker pool and
/// with one thread, against plain sequential 1 MiB reads of the same segment files on one thread in the same run,
/// passes alternating; managed bytes per load;</item>
/// <item>recovery: opening a store of about <c>recoveryBytes</c> of packets with its index snapshot (clean shutdown)
/// and without one (a crash before any snapshot: every record is scanned);</item>
/// <item>lookup: p50/p99 latency of an index lookup with <c>lookupPackets</c> packets stored (tiny one-block packets:
/// lookup cost does not depend on packet size).</item>
/// </list>
/// </summary>
internal static class StoreBenchmark
{
    public static BenchResult Run(ModelCard card, string directory, int packetTokens, int packets, int passes, long recoveryBytes, int lookupPackets)
    {
        var figures = new Dictionary<string, double>();
        var layout = KvCacheLayout.For(card.Config, DType.F16);
        var model = new ModelFingerprint(new UInt128(0xbe4c, (ulong)card.Name.GetHashCode()));
        int blocksPerPacket = (packetTokens + layout.BlockSize - 1) / layout.BlockSize;
        using var pool = new KvBlockPool(layout, 2 * blocksPerPacket);
        using var source = RandomPacket(pool, blocksPerPacket, packetTokens);
        double packetBytes = (double)blocksPerPacket * layout.BlockBytes;
        figures["packet_tokens"] = packetTokens;
        figures["packet_MB"] = packetBytes / 1e6;

        string path = Path.Combine(directory, "load");
        var ids = new PacketId[packets];
        using (var store = PacketStore.Open(path))
        {
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < packets; i++)
                ids[i] = store.PutAsync(source, model, Document(i, packetTokens), AdapterRef.None).AsTask().GetAwaiter().GetResult().Id;
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            figures["ingest_packets_per_s_commit_each"] = packets / seconds;
            figures["ingest_GB_per_s_commit_each"] = packets * packetBytes / seconds / 1e9;

            int grouped = Math.Max(8, packets / 2) / 8 * 8;
            start = Stopwatch.GetTimestamp();
            for (int i = 0; i < grouped; i += 8)
                store.PutManyAsync(Enumerable.Range(packets + i, 8).Select(n => new PacketWrite(source, model, Document(n, packetTokens), AdapterRef.None)).ToArray())
                    .AsTask().GetAwaiter().GetResult();
            seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            figures["ingest_packets_per_s_group_commit_8"] = grouped / seconds;
            figures["ingest_GB_per_s_group_commit_8"] = grouped * packetBytes / seconds / 1e9;

            // Loads and plain reads alternate, so both see the same page cache and the same noise.
            int[] blocks = new int[blocksPerPacket];
            for (int b = 0; b < blocks.Length; b++) blocks[b] = pool.Allocate();
            string[] segments = Directory.GetFiles(Path.Combine(path, "log"), "data.*");
            var buffer = GC.AllocateUninitializedArray<byte>(1 << 20, pinned: true);
            LoadAll(store, ids, model, pool, blocks);
            ReadAll(segments, buffer);
            using var oneThread = new Compute.Threading.WorkerPool(1);
            using var serial = PacketStore.Open(path, new PacketStoreOptions { ReadOnly = true, Workers = oneThread });
            var loads = new List<double>();
            var serialLoads = new List<double>();
            var reads = new List<double>();
            long allocated = 0;
            for (int pass = 0; pass < passes; pass++)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                start = Stopwatch.GetTimestamp();
                LoadAll(store, ids, model, pool, blocks);
                double elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
                allocated = Math.Max(allocated, GC.GetAllocatedBytesForCurrentThread() - before);
                loads.Add(packets * packetBytes / elapsed / 1e9);
                start = Stopwatch.GetTimestamp();
                LoadAll(serial, ids, model, pool, blocks);
                serialLoads.Add(packets * packetBytes / Stopwatch.GetElapsedTime(start).TotalSeconds / 1e9);
                start = Stopwatch.GetTimestamp();
                long bytes = ReadAll(segments, buffer);
                reads.Add(bytes / Stopwatch.GetElapsedTime(start).TotalSeconds / 1e9);
            }
            figures["load_GB_per_s_median"] = Statistics.Median(loads);
            figures["sequential_read_GB_per_s_median"] = Statistics.Median(reads);
            figures["load_over_sequential_read"] = Statistics.Median(loads) / Statistics.Median(reads);
            figures["load_1_thread_GB_per_s_median"] = Statistics.Median(serialLoads);
            figures["load_1_thread_over_sequential_read"] = Statistics.Median(serialLoads) / Statistics.Median(reads);
            figures["load_GB_per_s_min"] = loads.Min();
            figures["load_GB_per_s_max"] = loads.Max();
            figures["managed_bytes_per_load"] = (double)allocated / packets;
            foreach (int block in blocks) pool.Release(block);
        }

        // Recovery: grow a store to about recoveryBytes, then reopen it with and without its index snapshot.
        string big = Path.Combine(directory, "recovery");
        int recoveryPackets = (int)Math.Ceiling(recoveryBytes / packetBytes);
        using (var store = PacketStore.Open(big))
            for (int i = 0; i < recoveryPackets; i += 8)
                store.PutManyAsync(Enumerable.Range(i, Math.Min(8, recoveryPackets - i)).Select(n => new PacketWrite(source, model, Document(n, packetTokens), AdapterRef.None)).ToArray())
                    .AsTask().GetAwaiter().GetResult();
        figures["recovery_store_GB"] = recoveryPackets * packetBytes / 1e9;
        figures["recovery_packets"] = recoveryPackets;
        figures["open_with_snapshot_s"] = TimeOpen(big, recoveryPackets);
        File.Delete(Path.Combine(big, "index.snapshot"));
        figures["open_after_crash_full_scan_s"] = TimeOpen(big, recoveryPackets);
        Directory.Delete(big, recursive: true);

        // Lookup latency with many packets.
        string many = Path.Combine(directory, "lookup");
        var tinyLayout = new KvCacheLayout(1, 1, 8, 1, DType.F16);
        using var tinyPool = new KvBlockPool(tinyLayout, 1);
        using var tiny = new Packet(tinyPool, [tinyPool.Allocate()], 1);
        var lookupIds = new PacketId[lookupPackets];
        using (var store = PacketStore.Open(many))
        {
            const int batch = 1000;
            for (int i = 0; i < lookupPackets; i += batch)
            {
                var written = store.PutManyAsync(Enumerable.Range(i, Math.Min(batch, lookupPackets - i)).Select(n => new PacketWrite(tiny, model, Document(n, 4), AdapterRef.None)).ToArray())
                    .AsTask().GetAwaiter().GetResult();
                for (int j = 0; j < written.Length; j++) lookupIds[i + j] = written[j].Id;
            }
            var random = new SeededRandom(3);
            var latencies = new long[1_000_000];
            var timer = new long[latencies.Length];
            for (int i = 0; i < latencies.Length; i++)
            {
                var id = lookupIds[random.NextUInt64() % (ulong)lookupPackets];
                long t0 = Stopwatch.GetTimestamp();
                bool found = store.TryGetInfo(id, out _);
                latencies[i] = Stopwatch.GetTimestamp() - t0;
                if (!found) throw new InvalidOperationException($"lookup of stored packet {id} failed");
                t0 = Stopwatch.GetTimestamp();
                timer[i] = Stopwatch.GetTimestamp() - t0;
            }
            Array.Sort(latencies);
            Array.Sort(timer);
            double nanoseconds = 1e9 / Stopwatch.Frequency;
            figures["lookup_packets_in_store"] = store.Stats().Packets;
            figures["lookup_p50_ns"] = latencies[latencies.Length / 2] * nanoseconds;
            figures["lookup_p99_ns"] = latencies[latencies.Length * 99 / 100] * nanoseconds;
            figures["timer_overhead_p50_ns"] = timer[timer.Length / 2] * nanoseconds;
        }
        figures["lookup_store_open_with_snapshot_s"] = TimeOpen(many, lookupPackets);
        Directory.Delete(many, recursive: true);
        Directory.Delete(path, recursive: true);
        return new BenchResult("store", card.Name, "kv-f16", "F16", 1, figures, BenchResult.DescribeMachine(), DateTimeOffset.UtcNow);
    }

    private static Packet RandomPacket(KvBlockPool pool, int blocks, int tokens)
    {
        var random = new SeededRandom(11);
        var ids = new int[blocks];
        for (int b = 0; b < blocks; b++)
        {
            ids[b] = pool.Allocate();
            var values = MemoryMarshal.Cast<byte, Half>(pool.BlockBytes(ids[b]));
            for (int i = 0; i < values.Length; i++) values[i] = (Half)(random.NextSingle() * 2 - 1);
        }
        return new Packet(pool, ids, tokens);
    }

    private static int[] Document(int index, int tokens)
    {
        var document = new int[tokens];
        document[0] = index;
        return document;
    }

    private static void LoadAll(PacketStore store, PacketId[] ids, ModelFingerprint model, KvBlockPool pool, int[] blocks)
    {
        foreach (var id in ids) store.LoadInto(id, model, pool, blocks);
    }

    private static long ReadAll(string[] files, byte[] buffer)
    {
        long total = 0;
        foreach (string file in files)
        {
            using var handle = File.OpenHandle(file);
            for (long offset = 0; ; )
            {
                int read = RandomAccess.Read(handle, buffer, offset);
                if (read == 0) break;
                offset += read;
                total += read;
            }
        }
        return total;
    }

    private static double TimeOpen(string path, int expectedPackets)
    {
        long start = Stopwatch.GetTimestamp();
        using var store = PacketStore.Open(path, new PacketStoreOptions { ReadOnly = true });
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        if (store.Stats().Packets != expectedPackets) throw new InvalidOperationException($"reopened store has {store.Stats().Packets} packets, expected {expectedPackets}");
        return seconds;
    }
}
