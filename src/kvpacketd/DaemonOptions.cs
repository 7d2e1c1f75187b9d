using System.Globalization;
using System.Text.Json;
using KvPacket.Engine.Forward;
using KvPacket.Store;

namespace KvPacket.Daemon;

/// <summary>
/// The daemon's settings, from flags (<c>--model PATH --store DIR --socket PATH --tcp PORT --config FILE
/// --max-body-bytes N --max-tokens N --max-waiting N --kv-tokens N --adapter NAME[@VERSION] --served-model-name NAME --shared-tier URL
/// --shared-tier-copy --shutdown-seconds N</c>) over an optional JSON file
/// with the same names in camelCase (<c>{"model": …, "maxTokens": …}</c>).
/// </summary>
public sealed record DaemonOptions
{
    /// <summary>Checkpoint to serve.</summary>
    public string Model { get; init; } = "";
    /// <summary>Packet store directory (created if absent).</summary>
    public string Store { get; init; } = "";
    /// <summary>Unix socket path; default: $XDG_RUNTIME_DIR/kvpacket/kvpacketd.sock, else STORE/run/kvpacketd.sock.</summary>
    public string? Socket { get; init; }
    /// <summary>Also listen on 127.0.0.1:PORT (loopback only) when set.</summary>
    public int? Tcp { get; init; }
    /// <summary>Largest request body accepted.</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;
    /// <summary>Largest max_tokens accepted.</summary>
    public int MaxTokens { get; init; } = 4096;
    /// <summary>Requests allowed to wait; beyond that the answer is 429.</summary>
    public int MaxWaiting { get; init; } = 256;
    /// <summary>KV cache size in tokens.</summary>
    public int KvTokens { get; init; } = 65536;
    /// <summary>The stored adapter (NAME or NAME@VERSION) that kvpacket and kvlink requests use.</summary>
    public string? Adapter { get; init; }
    /// <summary>The model's name in the API (default: the checkpoint's file or directory name); requests naming another are 404.</summary>
    public string? ServedModelName { get; init; }
    /// <summary>Write a Chrome / Perfetto trace of the scheduler's steps, each request and packet loads here at shutdown (null: none).</summary>
    public string? Trace { get; init; }
    /// <summary>The packet tier shared with other nodes (<c>redis://HOST:PORT</c>, <c>rediss://…</c> or <c>HOST:PORT</c>; null: none).</summary>
    public string? SharedTier { get; init; }
    /// <summary>Also keep packets loaded from the shared tier in the local store (written in the background).</summary>
    public bool SharedTierCopy { get; init; }
    /// <summary>KV blocks resident packets may keep (null: a quarter of the cache; 0: every use reads the store).</summary>
    public int? ResidentBlocks { get; init; }
    /// <summary>How new packets are stored: f16 (default), f32, or int8 (half f16's bytes; decoded on the GPU where the model runs on one).</summary>
    public string PacketStorage { get; init; } = "f16";
    /// <summary>Where the model runs: cpu, cuda, or auto (cuda when a GPU is usable).</summary>
    public string Device { get; init; } = "auto";
    /// <summary>Grace period for in-flight requests on SIGTERM.</summary>
    public int ShutdownSeconds { get; init; } = 30;

    /// <summary>What <c>kvpacketd --help</c> prints.</summary>
    public const string Usage = """
        usage: kvpacketd --model PATH --store DIR [flags]      (kvpacket serve takes the same flags)
          --model, -m PATH          checkpoint to serve (llama2.c .bin, GGUF, or a Hugging Face directory)
          --store DIR               packet store (created if absent)
          --socket PATH             Unix socket; default $XDG_RUNTIME_DIR/kvpacket/kvpacketd.sock, else DIR/run/kvpacketd.sock
          --tcp PORT                also listen on 127.0.0.1:PORT
          --adapter NAME[@VERSION]  the stored adapter kvpacket or kvlink requests use (and the default mode with packets)
          --max-body-bytes N        largest request body (default 1048576)
          --max-tokens N            largest max_tokens (default 4096)
          --max-waiting N           requests allowed to wait before 429 (default 256)
          --kv-tokens N             KV cache size in tokens (default 65536)
          --resident-blocks N       KV blocks packets stay resident in between uses (default: a quarter of the cache; 0: read the store every time)
          --packet-storage f16|f32|int8  how new packets are stored (default f16; int8: half the bytes, per-head scales, decoded on the GPU there)
          --device cpu|cuda|ilgpu|auto  where the model runs: auto (default) takes a GPU when the driver and a device are present;
                                    ilgpu: the ILGPU backend (f32) on ILGPU's CUDA device, else its CPU accelerator
          --served-model-name NAME  the model's name in the API (default: the checkpoint's file or directory name)
          --shared-tier URL         share packets with other nodes on a Redis-protocol server (Garnet): redis://HOST:PORT
          --shared-tier-copy        also keep packets loaded from the shared tier in the local store (costs TTFT while copying)
          --trace FILE              write a Chrome / Perfetto trace (steps, requests, packet loads) to FILE at shutdown
          --shutdown-seconds N      grace period for in-flight requests on SIGTERM (default 30)
          --config FILE             the same settings as JSON in camelCase ({"model": …, "maxTokens": …}); flags win
          --help, -h                this text
        """;

    /// <summary>Whether <paramref name="args"/> ask for <see cref="Usage"/>.</summary>
    public static bool WantsHelp(string[] args) => args.Any(a => a is "--help" or "-h");

    /// <summary>Where the socket goes when <see cref="Socket"/> is not given.</summary>
    public string SocketPath => Socket ?? (Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime
        ? Path.Combine(runtime, "kvpacket", "kvpacketd.sock")
        : Path.Combine(Store, "run", "kvpacketd.sock"));

    /// <summary>Parses <paramref name="args"/>; a bad flag throws <see cref="ArgumentException"/> naming it.</summary>
    public static DaemonOptions Parse(string[] args)
    {
        var options = new DaemonOptions();
        int config = Array.IndexOf(args, "--config");
        if (config >= 0)
        {
            if (config + 1 >= args.Length) throw new ArgumentException("--config needs a file.");
            options = JsonSerializer.Deserialize<DaemonOptions>(File.ReadAllText(args[config + 1]), new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })
                      ?? throw new ArgumentException($"{args[config + 1]} holds no settings.");
        }
        for (int i = 0; i < args.Length; i++)
        {
            string flag = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{flag} needs a value.");
            int Count()
            {
                string text = Value();
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= 0 ? n : throw new ArgumentException($"{flag} needs a count (0 or more), not '{text}'.");
            }
            int Number()
            {
                string text = Value();
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : throw new ArgumentException($"{flag} needs a positive integer, not '{text}'.");
            }
            options = flag switch
            {
                "--model" or "-m" => options with { Model = Value() },
                "--store" => options with { Store = Value() },
                "--socket" => options with { Socket = Value() },
                "--tcp" => options with { Tcp = Number() },
                "--config" => Skip(options, ref i),
                "--max-body-bytes" => options with { MaxBodyBytes = Number() },
                "--max-tokens" => options with { MaxTokens = Number() },
                "--max-waiting" => options with { MaxWaiting = Number() },
                "--kv-tokens" => options with { KvTokens = Number() },
                "--device" => options with { Device = Value() },
                "--resident-blocks" => options with { ResidentBlocks = Count() },
                "--packet-storage" => options with { PacketStorage = Value() },
                "--shutdown-seconds" => options with { ShutdownSeconds = Number() },
                "--adapter" => options with { Adapter = Value() },
                "--served-model-name" => options with { ServedModelName = Value() },
                "--trace" => options with { Trace = Value() },
                "--shared-tier" => options with { SharedTier = Value() },
                "--shared-tier-copy" => options with { SharedTierCopy = true },
                _ => throw new ArgumentException($"unknown flag '{flag}' (kvpacketd --help lists them)."),
            };
        }
        if (options.Model.Length == 0) throw new ArgumentException("--model is required.");
        if (options.PacketStorage.ToLowerInvariant() is not ("f16" or "f32" or "int8"))
            throw new ArgumentException($"--packet-storage must be f16, f32 or int8, not '{options.PacketStorage}'.");
        try { Backends.Parse(options.Device); }
        catch (ArgumentException e) { throw new ArgumentException($"--device: {e.Message}"); }
        if (options.Store.Length == 0) throw new ArgumentException("--store is required.");
        if (options.SharedTier is { } tier)
        {
            try { SharedTierOptions.Parse(tier); }
            catch (FormatException e) { throw new ArgumentException($"--shared-tier: {e.Message}"); }
        }
        return options;
    }

    private static DaemonOptions Skip(DaemonOptions options, ref int i)
    {
        i++;
        return options;
    }
}
