using System.Net;
using System.Net.Sockets;
using Garnet;
using Garnet.server;

namespace KvPacket.Tests;

/// <summary>
/// A Garnet server in this process on a loopback port, with its data in a directory: every write goes to the
/// append-only file and is committed before it is acknowledged, so a restart on the same directory recovers what was
/// acknowledged — the server a test kills and restarts. (Garnet's native device needs a newer glibc than CI has, hence
/// the random-access file device.)
/// </summary>
internal sealed class EmbeddedGarnet : IDisposable
{
    private readonly GarnetServer _server;

    static EmbeddedGarnet()
    {
        // The servers run on this process's thread pool beside the tests' synchronous client calls: on 2 cores the
        // pool's slow growth from 2 threads left a CLUSTER command waiting past its timeout.
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 32), Math.Max(io, 32));
    }

    private EmbeddedGarnet(GarnetServer server, int port, string directory)
    {
        _server = server;
        Port = port;
        Directory = directory;
    }

    public int Port { get; }
    public string Directory { get; }
    public string Endpoint => $"127.0.0.1:{Port}";

    /// <summary>Starts a server on <paramref name="directory"/> (recovering what is there) on <paramref name="port"/>, or a free port.</summary>
    public static EmbeddedGarnet Start(string directory, int? port = null) => Start(directory, port, cluster: false);

    /// <summary>
    /// Starts a Garnet cluster of <paramref name="nodes"/> in-memory servers, the 16384 slots split evenly between them,
    /// and waits until the first one knows them all.
    /// </summary>
    public static EmbeddedGarnet[] StartCluster(string directory, int nodes)
    {
        var servers = Enumerable.Range(0, nodes).Select(n => Start(System.IO.Path.Combine(directory, $"node{n}"), null, cluster: true)).ToArray();
        for (int n = 0; n < nodes; n++)
        {
            using var admin = StackExchange.Redis.ConnectionMultiplexer.Connect($"{servers[n].Endpoint},allowAdmin=true,syncTimeout=30000");
            var server = admin.GetServer(servers[n].Endpoint);
            server.Execute("CLUSTER", "ADDSLOTSRANGE", n * 16384 / nodes, (n + 1) * 16384 / nodes - 1);
            if (n > 0) server.Execute("CLUSTER", "MEET", "127.0.0.1", servers[0].Port);
        }
        using (var seed = StackExchange.Redis.ConnectionMultiplexer.Connect(servers[0].Endpoint + ",allowAdmin=true,syncTimeout=30000"))
            for (int wait = 0; wait < 200; wait++)
            {
                string info = seed.GetServer(servers[0].Endpoint).Execute("CLUSTER", "INFO").ToString();
                if (info.Contains($"cluster_known_nodes:{nodes}", StringComparison.Ordinal) && info.Contains("cluster_state:ok", StringComparison.Ordinal)) return servers;
                Thread.Sleep(50);
            }
        throw new TimeoutException("the Garnet cluster did not form");
    }

    private static EmbeddedGarnet Start(string directory, int? port, bool cluster)
    {
        System.IO.Directory.CreateDirectory(directory);
        int chosen = port ?? FreePort();
        for (int attempt = 0; ; attempt++)
        {
            var server = new GarnetServer(cluster
                ? new GarnetServerOptions
                {
                    EndPoints = [new IPEndPoint(IPAddress.Loopback, chosen)],
                    EnableCluster = true,
                    CheckpointDir = directory,
                    DeviceType = Tsavorite.core.DeviceType.RandomAccess,
                    QuietMode = true,
                }
                : new GarnetServerOptions
                {
                    EndPoints = [new IPEndPoint(IPAddress.Loopback, chosen)],
                    EnableStorageTier = true,
                    LogDir = directory,
                    CheckpointDir = directory,
                    EnableAOF = true,
                    Recover = true,
                    DeviceType = Tsavorite.core.DeviceType.RandomAccess,
                    QuietMode = true,
                });
            try
            {
                server.Start();
                return new EmbeddedGarnet(server, chosen, directory);
            }
            catch (Exception) when (attempt < 20)
            {
                server.Dispose(); // the port of a server just stopped can take a moment to come free
                Thread.Sleep(100);
            }
        }
    }

    /// <summary>A loopback port nothing listens on (now).</summary>
    public static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public void Dispose() => _server.Dispose();
}
