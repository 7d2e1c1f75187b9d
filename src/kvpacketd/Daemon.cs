using KvPacket.Core.Checkpoints;
using KvPacket.Core.Diagnostics;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;
using KvPacket.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace KvPacket.Daemon;

/// <summary>
/// kvpacketd: one model served by a <see cref="KvPacketEngine"/> over HTTP/1.1 on a Unix socket (owner-only, in an
/// owner-only directory), with packets kept durably in a <see cref="PacketStore"/>. SIGTERM stops accepting, lets
/// in-flight requests finish within the grace period, drains the engine, and flushes the store.
/// </summary>
public static class Daemon
{
    /// <summary>Runs the daemon until SIGTERM/SIGINT (or <paramref name="stop"/>); returns the process exit code.</summary>
    public static async Task<int> RunAsync(string[] args, CancellationToken stop = default)
    {
        if (DaemonOptions.WantsHelp(args))
        {
            Console.WriteLine(DaemonOptions.Usage);
            return 0;
        }
        DaemonOptions options;
        try { options = DaemonOptions.Parse(args); }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"kvpacketd: {e.Message}");
            return 2;
        }

        using var loggers = LoggerFactory.Create(logging => logging.AddSimpleConsole(console => { console.SingleLine = true; console.TimestampFormat = "HH:mm:ss.fff "; }));
        var log = loggers.CreateLogger("kvpacketd");
        // The store's writer lock comes first: a second daemon on the same store stops here, before touching the socket.
        PacketStore store;
        try { store = PacketStore.Open(options.Store, new PacketStoreOptions { Logger = log }); }
        catch (PacketStoreException e)
        {
            log.LogError("{Error}", e.Message);
            return 3;
        }

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(console => { console.SingleLine = true; console.TimestampFormat = "HH:mm:ss.fff "; });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning); // one line per request from the framework is noise; ours say what matters
        builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = TimeSpan.FromSeconds(options.ShutdownSeconds));
        string socket = Path.GetFullPath(options.SocketPath);
        PrepareSocketDirectory(socket);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            kestrel.ListenUnixSocket(socket);
            if (options.Tcp is int port) kestrel.ListenLocalhost(port);
        });

        var app = builder.Build();
        Checkpoint checkpoint;
        try { checkpoint = CheckpointLoader.Load(options.Model); }
        catch (Exception e) when (e is CheckpointFormatException or IOException)
        {
            log.LogError("cannot load the model: {Error}", e.Message);
            store.Dispose();
            return 3;
        }
        var tokenizer = TokenizerLoader.TryLoadNextTo(options.Model);
        ChatTemplate? chat;
        try { chat = tokenizer is null ? null : ChatTemplate.TryLoadNextTo(options.Model); }
        catch (FormatException e)
        {
            log.LogError("cannot read the chat template: {Error}", e.Message);
            checkpoint.Dispose();
            store.Dispose();
            return 3;
        }
        Adapter? adapter = null;
        if (options.Adapter is { Length: > 0 } name)
        {
            adapter = store.FindAdapter(name, ModelFingerprint.Of(checkpoint));
            if (adapter is null)
            {
                log.LogError("the store has no adapter {Adapter}", name);
                checkpoint.Dispose();
                store.Dispose();
                return 3;
            }
        }
        // An unreachable tier is logged and retried in the background; the node serves from its local tiers meanwhile.
        var shared = options.SharedTier is { } tier ? SharedPacketTier.Connect(SharedTierOptions.Parse(tier), log) : null;
        StoredPackets? packets = null;
        var trace = options.Trace is null ? null : new TraceRecorder(trackNames: TraceTracks.Names);
        string device = "";
        var where = Backends.Resolve(Backends.Parse(options.Device));
        // A GPU step costs about the same for 256 tokens as for 2048: larger steps prefill long prompts in fewer of them.
        var sizes = new TransformerOptions { KvCacheTokens = options.KvTokens, MaxBatchTokens = where == BackendDevice.Cuda ? 2048 : 256, MaxBatchSequences = 64 };
        var engine = KvPacketEngine.Create(checkpoint, new KvPacketEngineOptions
        {
            Model = sizes,
            Backend = model => Backends.Open(model, where, sizes, out device),
            Scheduler = new SchedulerOptions { MaxWaiting = options.MaxWaiting },
            Adapter = adapter,
            Packets = model => packets = new StoredPackets(model, store, Enum.Parse<KvStorage>(options.PacketStorage, ignoreCase: true), options.ResidentBlocks, shared: shared) { Trace = trace, CopySharedToStore = options.SharedTierCopy },
        });
        engine.Scheduler.Trace = trace;
        engine.Tokenizer = tokenizer;
        engine.ChatTemplate = chat;
        foreach (var info in store.List(0, int.MaxValue).Where(p => p.Adapter == AdapterRef.None && p.PositionSpan == p.KvTokens))
            engine.Register(store.ReadDocument(info.Id), info.StoredBytes);
        var metrics = new DaemonMetrics();
        var api = new DaemonApi(engine, store, () => packets, metrics, options, options.ServedModelName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(options.Model)), adapter, app.Lifetime);
        api.Map(app);

        try
        {
            await app.StartAsync();
            File.SetUnixFileMode(socket, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            log.LogInformation("serving {Model} on {Socket} ({Packets} packets in {Store}{Shared}) on {Device}", options.Model, socket, engine.Packets.Count, store.DirectoryPath,
                shared is null ? "" : $", shared tier {shared.Endpoint}", device);
            await app.WaitForShutdownAsync(stop);
        }
        finally
        {
            log.LogInformation("shutting down: draining the engine and flushing the store");
            await engine.DisposeAsync();
            if (trace is not null)
            {
                trace.WriteChromeTrace(options.Trace!);
                log.LogInformation("wrote {Spans} spans to {Trace} ({Dropped} dropped)", trace.Count, options.Trace, trace.Dropped);
            }
            store.Dispose();
            shared?.Dispose();
            await app.DisposeAsync();
            File.Delete(socket);
        }
        return 0;
    }

    /// <summary>The socket's directory is created owner-only first, so nobody else can reach the socket even before its own mode is set.</summary>
    private static void PrepareSocketDirectory(string socket)
    {
        string directory = Path.GetDirectoryName(socket)!;
        Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        if (File.Exists(socket)) File.Delete(socket); // a stale socket from a killed daemon; the store lock guards against a live one
    }
}
