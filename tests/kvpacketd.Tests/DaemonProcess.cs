using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;
using KvPacket.Tests;

namespace KvPacket.Daemon.Tests;

/// <summary>A real kvpacketd process on a temporary socket and store, with an HTTP client that talks over the socket.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal sealed class DaemonProcess : IAsyncDisposable
{
    public static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private readonly Process _process;
    private readonly System.Text.StringBuilder _log = new();

    private DaemonProcess(Process process, string store, string socket)
    {
        _process = process;
        Store = store;
        Socket = socket;
        Client = ClientFor(socket);
    }

    public string Store { get; }
    public string Socket { get; }
    public HttpClient Client { get; }
    public int Pid => _process.Id;
    public string Log { get { lock (_log) return _log.ToString(); } }

    public static HttpClient ClientFor(string socket) => UnixSocketClient.Create(socket, TimeSpan.FromSeconds(60));

    /// <summary>Starts a daemon on <paramref name="store"/> (and a socket beside it) and waits until /health answers.</summary>
    public static async Task<DaemonProcess> StartAsync(string store, params string[] extra)
    {
        var daemon = Launch(store, Path.Combine(store + "-run", "d.sock"), extra);
        for (int i = 0; i < 200; i++)
        {
            if (daemon._process.HasExited) throw new InvalidOperationException($"kvpacketd exited with {daemon._process.ExitCode}: {daemon.Log}");
            try
            {
                if ((await daemon.Client.GetAsync("/health")).IsSuccessStatusCode) return daemon;
            }
            catch (HttpRequestException) { }
            await Task.Delay(50);
        }
        throw new TimeoutException("kvpacketd did not come up: " + daemon.Log);
    }

    /// <summary>Starts a daemon process without waiting for it.</summary>
    public static DaemonProcess Launch(string store, string socket, params string[] extra)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "kvpacketd.dll");
        string host = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
        var start = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { dll, "--model", Stories, "--store", store, "--socket", socket, "--kv-tokens", "16384" }.Concat(extra)) start.ArgumentList.Add(arg);
        var process = Process.Start(start)!;
        var daemon = new DaemonProcess(process, store, socket);
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (daemon._log) daemon._log.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (daemon._log) daemon._log.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return daemon;
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(cancel.Token);
        return _process.ExitCode;
    }

    public void Signal(string signal) => Process.Start("kill", ["-" + signal, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();

    public async Task<JsonElement> PostAsync(string path, object body, int expectedStatus = 200)
    {
        var response = await Client.PostAsJsonAsync(path, body);
        string text = await response.Content.ReadAsStringAsync();
        if ((int)response.StatusCode != expectedStatus) throw new InvalidOperationException($"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    public async Task<double> MetricAsync(string name)
    {
        string text = await Client.GetStringAsync("/metrics");
        string line = text.Split('\n').First(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        return double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill();
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
