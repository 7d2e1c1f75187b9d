using System.Net.Http.Json;
using System.Text.Json;
using KvPacket.Tests;
using Xunit;

namespace KvPacket.Daemon.Tests;

/// <summary>Several kvpacketd processes sharing packets through a Garnet server that the test starts in-process.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class SharedTierDaemonTests
{
    private static int[] Tokens(int count, int seed) => Enumerable.Range(0, count).Select(i => 3 + (i * 37 + seed * 101) % 500).ToArray();

    private static async Task<string> IngestAsync(DaemonProcess daemon, int[] document) =>
        (await daemon.PostAsync("/v1/packets", new { tokens = document }, 201)).GetProperty("id").GetString()!;

    private static async Task<int[]> CompleteAsync(DaemonProcess daemon, string[] packets, int[] prompt) =>
        (await daemon.PostAsync("/v1/completions", new { prompt, max_tokens = 12, temperature = 0, packets, mode = "naive" }))
            .GetProperty("choices")[0].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();

    [Fact]
    public async Task A_packet_ingested_on_node_A_answers_a_query_on_node_B_from_the_shared_tier_with_no_rebuild()
    {
        using var temp = Fixtures.TempDirectory();
        using var garnet = EmbeddedGarnet.Start(Path.Combine(temp.Path, "garnet"));
        await using var a = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "a"), "--shared-tier", $"redis://{garnet.Endpoint}");
        await using var b = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "b"), "--shared-tier", $"redis://{garnet.Endpoint}");
        string id = await IngestAsync(a, Tokens(60, 1));
        int[] prompt = Tokens(6, 2);

        int[] onA = await CompleteAsync(a, [id], prompt);
        Assert.Equal(onA, await CompleteAsync(b, [id], prompt));
        Assert.Equal((1.0, 0.0, 0.0), (await b.MetricAsync("kvpacket_shared_tier_hits"), await b.MetricAsync("kvpacket_packet_builds"), await b.MetricAsync("kvpacket_shared_tier_errors")));
        Assert.Equal((1.0, 1.0), (await a.MetricAsync("kvpacket_packet_builds"), await a.MetricAsync("kvpacket_shared_tier_publishes")));
        Assert.Equal(60, (await b.Client.GetFromJsonAsync<JsonElement>($"/v1/packets/{id}")).GetProperty("tokens").GetInt32());
    }

    [Fact]
    public async Task Three_daemons_and_32_concurrent_requests_over_16_shared_packets_answer_like_one_daemon_and_build_each_packet_once()
    {
        using var temp = Fixtures.TempDirectory();
        var documents = Enumerable.Range(0, 16).Select(d => Tokens(24 + 5 * d, d)).ToArray();
        string[] Packets(string[] ids, int request) => [ids[request % 16], ids[(request * 7 + 3) % 16], ids[(request * 5 + 1) % 16]];
        int[] Prompt(int request) => Tokens(5, 100 + request);

        var expected = new int[32][];
        await using (var solo = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "solo")))
        {
            var ids = new string[16];
            for (int d = 0; d < 16; d++) ids[d] = await IngestAsync(solo, documents[d]);
            for (int r = 0; r < 32; r++) expected[r] = await CompleteAsync(solo, Packets(ids, r), Prompt(r));
        }

        using var garnet = EmbeddedGarnet.Start(Path.Combine(temp.Path, "garnet"));
        var nodes = await Task.WhenAll(Enumerable.Range(0, 3).Select(n => DaemonProcess.StartAsync(Path.Combine(temp.Path, $"node{n}"), "--shared-tier", garnet.Endpoint)));
        try
        {
            var shared = new string[16];
            for (int d = 0; d < 16; d++) shared[d] = await IngestAsync(nodes[d % 3], documents[d]);
            int[][] answers;
            try { answers = await Task.WhenAll(Enumerable.Range(0, 32).Select(r => Task.Run(() => CompleteAsync(nodes[r % 3], Packets(shared, r), Prompt(r))))); }
            catch (Exception e) { throw new Exception(string.Join("\n----\n", nodes.Select(n => n.Log)), e); }
            for (int r = 0; r < 32; r++) Assert.Equal(expected[r], answers[r]);
            double builds = 0, errors = 0;
            foreach (var node in nodes)
            {
                builds += await node.MetricAsync("kvpacket_packet_builds");
                errors += await node.MetricAsync("kvpacket_shared_tier_errors");
            }
            Assert.Equal((16.0, 0.0), (builds, errors)); // every packet computed once in the whole cluster
        }
        finally
        {
            foreach (var node in nodes) await node.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_daemon_whose_shared_tier_is_down_at_start_says_so_and_serves_from_its_local_tiers()
    {
        using var temp = Fixtures.TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(Path.Combine(temp.Path, "store"), "--shared-tier", $"redis://127.0.0.1:{EmbeddedGarnet.FreePort()}");
        string id = await IngestAsync(daemon, Tokens(40, 3));
        Assert.Equal(12, (await CompleteAsync(daemon, [id], Tokens(5, 4))).Length);
        Assert.Equal((0.0, 1.0), (await daemon.MetricAsync("kvpacket_shared_tier_up"), await daemon.MetricAsync("kvpacket_packet_builds")));
        Assert.Contains("unreachable", daemon.Log, StringComparison.Ordinal);
    }
}
