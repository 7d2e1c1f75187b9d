using KvPacket.Compute.Kv;
using KvPacket.Store;
using KvPacket.Store.Testing;

// Writes synthetic packets into a store as fast as it can and prints "committed SEED ID" after each PutAsync
// returns; the crash test kills it with SIGKILL at a random moment and checks what survived.
if (args.Length != 2) { Console.Error.WriteLine("usage: KvPacket.Store.CrashWriter STORE FIRST-SEED"); return 2; }
using var pool = new KvBlockPool(SyntheticPackets.Layout(), 64);
using var store = PacketStore.Open(args[0], new PacketStoreOptions { TargetPageBytes = 4096, LogPageSizeBits = 16, SegmentSizeBits = 20 });
Console.Out.Flush();
for (int seed = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture); ; seed++)
{
    using var packet = SyntheticPackets.Build(pool, seed);
    var info = await store.PutAsync(packet, SyntheticPackets.Model, SyntheticPackets.Tokens(seed), AdapterRef.None);
    Console.WriteLine($"committed {seed} {info.Id}");
    Console.Out.Flush();
}
