using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;

namespace KvPacket.Daemon;

/// <summary>An <see cref="HttpClient"/> that reaches kvpacketd over its Unix socket (for the CLI, benchmarks and tests), and its JSON calls.</summary>
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

    /// <summary>Sends <paramref name="body"/> (if any) as JSON and returns the JSON answer; a non-success status throws with the daemon's error.</summary>
    public static JsonElement SendJson(this HttpClient client, HttpMethod method, string path, object? body = null)
    {
        using var request = new HttpRequestMessage(method, path) { Content = body is null ? null : JsonContent.Create(body) };
        using var response = client.Send(request);
        string text = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }
}
