using System.Collections.Concurrent;
using KvPacket.Compute.Kv;
using KvPacket.Store.Testing;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Store.Tests;

public class ConcurrencyTests
{
    [Fact]
    public async Task Writers_readers_deletes_and_compaction_together_lose_and_mix_up_nothing()
    {
        using var temp = Fixtures.TempDirectory();
        using var store = PacketStore.Open(temp.Path, TestStores.Options());
        const int writers = 3, perWriter = 40, readers = 3;
        var stored = new ConcurrentDictionary<int, PacketId>();
        var deleted = new ConcurrentDictionary<int, bool>();
        var failures = new ConcurrentQueue<string>();
        int writing = writers;

        var writerTasks = Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
        {
            using var pool = new KvBlockPool(SyntheticPackets.Layout(), 16);
            for (int i = 0; i < perWriter; i++)
            {
                int seed = 1000 * (w + 1) + i;
                stored[seed] = (await TestStores.PutSeedAsync(store, pool, seed)).Id;
                if (i % 5 == 4 && await store.DeleteAsync(stored[seed - 2])) deleted[seed - 2] = true;
            }
            Interlocked.Decrement(ref writing);
        })).ToArray();

        // Readers spin on dedicated threads so they cannot starve the thread pool the writers' awaits resume on.
        var readerTasks = Enumerable.Range(0, readers).Select(r => Task.Factory.StartNew(() =>
        {
            using var pool = new KvBlockPool(SyntheticPackets.Layout(), 16);
            var random = new Random(r);
            int loads = 0;
            while (Volatile.Read(ref writing) > 0 || loads < 50)
            {
                var seeds = stored.Keys.ToArray();
                if (seeds.Length == 0) { Thread.Yield(); continue; }
                int seed = seeds[random.Next(seeds.Length)];
                try
                {
                    // A packet deleted meanwhile may be gone; one that loads must hold exactly its own KV.
                    if (store.TryLoad(stored[seed], SyntheticPackets.Model, pool, out var packet))
                        using (packet)
                            if (!SyntheticPackets.Matches(packet, seed)) failures.Enqueue($"packet {seed} loaded with other data");
                    loads++;
                }
                catch (Exception e) { failures.Enqueue($"load of {seed}: {e.Message}"); }
                if (pool.FreeBlockCount != 16) failures.Enqueue("reader leaked blocks");
            }
        }, TaskCreationOptions.LongRunning)).ToArray();

        var compactor = Task.Run(async () =>
        {
            int compactions = 0;
            while (Volatile.Read(ref writing) > 0 || compactions < 2)
            {
                await store.CompactAsync();
                compactions++;
                await Task.Delay(20);
            }
        });

        await Task.WhenAll([.. writerTasks, .. readerTasks, compactor]);
        Assert.Empty(failures);
        using var check = new KvBlockPool(SyntheticPackets.Layout(), 16);
        foreach (var (seed, id) in stored)
            Assert.Equal(!deleted.ContainsKey(seed), store.Contains(id));
        foreach (var (seed, id) in stored.Where(s => !deleted.ContainsKey(s.Key)))
            Assert.True(TestStores.LoadsAs(store, check, id, seed), $"packet {seed}");
        Assert.Equal(writers * perWriter - deleted.Count, store.Stats().Packets);
        Assert.True(store.Verify().IsSound);
    }
}
