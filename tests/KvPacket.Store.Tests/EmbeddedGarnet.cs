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
    public static EmbeddedGarnet Start(string directory, int? port = null)
    {
        System.IO.Directory.CreateDirectory(directory);
        int chosen = port ?? FreePort();
        for (int attempt = 0; ; attempt++)
        {
            var server = new GarnetServer(new GarnetServerOptions
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
