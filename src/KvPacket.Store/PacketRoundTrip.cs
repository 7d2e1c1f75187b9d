using KvPacket.Compute.Kv;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;

namespace KvPacket.Store;

/// <summary>What <see cref="PacketRoundTrip.Run"/> found.</summary>
/// <param name="Packets">Packets built, stored and read back.</param>
/// <param name="DifferentRows">K or V rows (of filled slots) whose bytes differ between the built and the loaded packet (must be 0).</param>
/// <param name="MaxAbsLogitDifference">Largest |Δ| of a naive request's query logits, packets built vs loaded from the store.</param>
/// <param name="StoreLoads">Acquires the restarted source served from the store (must be every packet).</param>
public sealed record PacketRoundTripResult(int Packets, long DifferentRows, double MaxAbsLogitDifference, long StoreLoads);

/// <summary>
/// Packets built on a backend (the CPU's, or a GPU's device blocks), stored through <see cref="StoredPackets"/>, then read
/// back by a second source over the reopened store — a restarted server — into the backend's cache: the two packets must
/// hold the same bytes, and a request over either the same logits. Stored in the cache's own element type, the packet
/// read back is compared with the one built; stored as int8, the packet the backend decoded itself (a GPU's device
/// decode) is compared with the one the host decoded.
/// </summary>
public static class PacketRoundTrip
{
    /// <summary>
    /// Runs the round trip for <paramref name="documents"/> seeded documents in a store at <paramref name="directory"/>
    /// (created, left for the caller), stored as <paramref name="storage"/> (null: the cache's element type).
    /// </summary>
    public static PacketRoundTripResult Run(IForwardBackend model, string directory, int documents = 4, KvStorage? storage = null)
    {
        var c = model.Config;
        var layout = model.KvBlocks.Layout;
        var stored = storage ?? (layout.Type == Core.Memory.DType.F16 ? KvStorage.F16 : KvStorage.F32);
        bool int8 = stored == KvStorage.Int8;
        var random = new SeededRandom(57);
        var request = new RagRequest([c.BosTokenId ?? 1], [.. Enumerable.Range(0, documents).Select(d => random.NextTokens(19 + 23 * d, 3, c.VocabSize))],
            random.NextTokens(9, 3, c.VocabSize));
        using var host = new KvBlockPool(layout, 2 * request.Documents.Sum(d => (d.Length + layout.BlockSize - 1) / layout.BlockSize));

        // Built on the backend and stored (copied out to the host first where the cache is a device's).
        using (var store = PacketStore.Open(directory))
        using (var source = new StoredPackets(model, store, stored))
            foreach (var document in request.Documents) source.Acquire(document, null).Dispose();

        long differentRows = 0;
        float[] built, loaded;
        long storeLoads;
        using (var store = PacketStore.Open(directory, new PacketStoreOptions { ReadOnly = true }))
        using (var source = new StoredPackets(model, store, stored))
        using (IPacketSource memory = int8 ? new StoredPackets(model, store, stored) { DecodeInt8OnDevice = false } : new BuiltPackets(model))
        {
            foreach (var document in request.Documents)
            {
                using var fromStore = source.Acquire(document, null);
                using var fresh = memory.Acquire(document, null);
                using var a = model.ExportPacket(fromStore, host);
                using var b = model.ExportPacket(fresh, host);
                differentRows += DifferentRows(host, a, b);
            }
            storeLoads = source.StoreLoads;
            using (var engine = new RagEngine(model, memory) { QueryLogits = LogitsFor.AllTokens }) built = Logits(engine, request);
            using (var engine = new RagEngine(model, source) { QueryLogits = LogitsFor.AllTokens }) loaded = Logits(engine, request);
        }
        double maxAbs = 0;
        for (int i = 0; i < built.Length; i++) maxAbs = Math.Max(maxAbs, Math.Abs((double)built[i] - loaded[i]));
        return new PacketRoundTripResult(documents, differentRows, maxAbs, storeLoads);
    }

    private static float[] Logits(RagEngine engine, RagRequest request)
    {
        var result = engine.Prefill(request, RagMode.Naive);
        result.Sequence.Dispose();
        return result.QueryLogits;
    }

    /// <summary>K and V rows of the packets' filled slots whose bytes differ.</summary>
    private static long DifferentRows(KvBlockPool pool, Packet a, Packet b)
    {
        var layout = pool.Layout;
        int rowBytes = layout.HeadDim * layout.ElementBytes;
        long different = 0;
        for (int block = 0; block < a.Blocks.Count; block++)
        {
            var x = pool.BlockBytes(a.Blocks[block]);
            var y = pool.BlockBytes(b.Blocks[block]);
            int rows = Math.Min(layout.BlockSize, a.Length - block * layout.BlockSize);
            for (int plane = 0; plane < 2 * layout.LayerCount; plane++)
                for (int head = 0; head < layout.KvHeadCount; head++)
                    for (int slot = 0; slot < rows; slot++)
                    {
                        int at = (int)(plane * layout.PlaneBytes + layout.Offset(head, slot) * layout.ElementBytes);
                        if (!x.Slice(at, rowBytes).SequenceEqual(y.Slice(at, rowBytes))) different++;
                    }
        }
        return different;
    }
}
