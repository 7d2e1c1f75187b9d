using System.Diagnostics;
using KvPacket.Store.Testing;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Store.Tests;

/// <summary>A real writer process killed with SIGKILL at random moments loses nothing it reported committed.</summary>
public class CrashTests
{
    [Fact]
    public async Task Every_packet_reported_committed_survives_SIGKILL_whole_and_nothing_torn_appears()
    {
        using var temp = Fixtures.TempDirectory();
        using var pool = TestStores.Pool();
        var committed = new Dictionary<int, PacketId>();
        var random = new Random(2026);
        int nextSeed = 1;
        for (int round = 0; round < 4; round++)
        {
            int target = committed.Count + random.Next(5, 40);
            using var writer = StartWriter(temp.Path, nextSeed);
            if (round == 0)
            {
                // While the writer runs, the directory is locked, with its pid in the message.
                string first = await writer.StandardOutput.ReadLineAsync() ?? throw new InvalidOperationException(await writer.StandardError.ReadToEndAsync());
                Record(first, committed);
                var locked = Assert.Throws<StoreLockedException>(() => PacketStore.Open(temp.Path, TestStores.Options()));
                Assert.Contains($"pid {writer.Id}", locked.Message);
            }
            while (committed.Count < target)
            {
                string line = await writer.StandardOutput.ReadLineAsync() ?? throw new InvalidOperationException("writer exited: " + await writer.StandardError.ReadToEndAsync());
                Record(line, committed);
            }
            Thread.Sleep(random.Next(0, 15)); // land the kill anywhere in the next put
            writer.Kill(); // SIGKILL on Unix
            await writer.WaitForExitAsync();
            // Lines the writer managed to print before dying are committed too.
            while (await writer.StandardOutput.ReadLineAsync() is string late) Record(late, committed);
            nextSeed = committed.Keys.Max() + 1;

            using var store = PacketStore.Open(temp.Path, TestStores.Options());
            foreach (var (seed, id) in committed)
                Assert.True(TestStores.LoadsAs(store, pool, id, seed), $"round {round}: committed packet {seed} is missing or differs");
            foreach (var info in store.List(0, int.MaxValue))
            {
                int seed = store.ReadDocument(info.Id)[0];
                Assert.True(TestStores.LoadsAs(store, pool, info.Id, seed), $"round {round}: packet {seed} is not whole");
            }
            Assert.True(store.List(0, int.MaxValue).Count <= committed.Count + 1);
            var verification = store.Verify();
            Assert.True(verification.IsSound, string.Join("; ", verification.Problems));
        }
        Assert.Equal(256, pool.FreeBlockCount);
    }

    private static void Record(string line, Dictionary<int, PacketId> committed)
    {
        string[] parts = line.Split(' ');
        Assert.Equal("committed", parts[0]);
        committed[int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture)] = PacketId.Parse(parts[2]);
    }

    private static Process StartWriter(string store, int firstSeed)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "KvPacket.Store.CrashWriter.dll");
        string host = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
        var start = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { dll, store, firstSeed.ToString(System.Globalization.CultureInfo.InvariantCulture) }) start.ArgumentList.Add(arg);
        return Process.Start(start) ?? throw new InvalidOperationException("could not start the crash writer");
    }
}
