using System.Diagnostics;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Store;

namespace KvPacket.Cli.Bench;

/// <summary>
/// A request's packets loaded from the store (its files in the page cache) into a backend's cache with nothing
/// resident: f16 pages, int8 pages decoded on the device, int8 pages decoded on the host — in turn within each round, so
/// the three see the same machine. Prints the median time to have every packet in the cache, and GB/s of stored bytes
/// read and of KV delivered.
/// </summary>
internal static class PacketLoadBenchmark
{
    private static readonly (string Label, KvStorage Storage, bool OnDevice)[] Variants =
        [("f16 pages", KvStorage.F16, true), ("int8, device decode", KvStorage.Int8, true), ("int8, host decode", KvStorage.Int8, false)];

    public static void Run(IForwardBackend model, IReadOnlyList<int[]> documents, int rounds)
    {
        string root = Directory.CreateTempSubdirectory("kvpacket-packet-loads-").FullName;
        var stores = new Dictionary<KvStorage, PacketStore>();
        try
        {
            foreach (var storage in new[] { KvStorage.F16, KvStorage.Int8 })
            {
                var store = stores[storage] = PacketStore.Open(Path.Combine(root, storage.ToString()));
                using var source = new StoredPackets(model, store, storage);
                foreach (var document in documents) source.Acquire(document, null).Dispose();
            }
            var times = Variants.ToDictionary(v => v.Label, _ => new List<double>());
            var stored = new Dictionary<string, long>();
            long kvBytes = 0;
            var packets = new Packet[documents.Count];
            for (int round = 0; round <= rounds; round++)   // round 0 warms up
                foreach (var (label, storage, onDevice) in Variants)
                {
                    using var source = new StoredPackets(model, stores[storage], storage, residentBlockBudget: 0) { DecodeInt8OnDevice = onDevice };
                    long start = Stopwatch.GetTimestamp();
                    for (int i = 0; i < packets.Length; i++) packets[i] = source.Acquire(documents[i], null);
                    model.WaitForImports();
                    double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
                    kvBytes = packets.Sum(p => (long)p.Blocks.Count) * model.KvBlocks.Layout.BlockBytes;
                    foreach (var packet in packets) packet.Dispose();
                    if (round > 0) times[label].Add(seconds);
                    stored[label] = source.BytesLoaded;
                }
            Console.WriteLine($"Packets from the store (page cache) into the cache, nothing resident: {documents.Count} packets, {kvBytes / 1e6:F1} MB of KV; median of {rounds} rounds, variants in turn");
            foreach (var (label, _, _) in Variants)
            {
                double seconds = Statistics.Median(times[label].ToArray());
                Console.WriteLine($"  {label,-20}: {seconds * 1e3,7:F2} ms, {stored[label] / 1e6,6:F1} MB read ({stored[label] / seconds / 1e9:F2} GB/s), KV delivered {kvBytes / seconds / 1e9:F2} GB/s");
            }
        }
        finally
        {
            foreach (var store in stores.Values) store.Dispose();
            Directory.Delete(root, recursive: true);
        }
    }
}
