using System.Net.Sockets;

namespace KvPacket.Daemon;

/// <summary>An <see cref="HttpClient"/> that reaches kvpacketd over its Unix socket (for the CLI, benchmarks and tests).</summary>
public static class UnixSocketClient
{
    /// <summary>A client whose every connection goes to <paramref name="socket"/>; requests use any host name.</summary>
    public static HttpClient Create(string socket, TimeSpan? timeout = null) => new(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = 256,
        ConnectCallback = async (_, cancel) =>
        {
            var connection = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await connection.ConnectAsync(new UnixDomainSocketEndPoint(socket), cancel);
                return new NetworkStream(connection, ownsSocket: true);
            }
            catch
            {
                connection.Dispose();
                throw;
            }
        },
    }) { BaseAddress = new Uri("http://kvpacketd"), Timeout = timeout ?? TimeSpan.FromSeconds(100) };
}
