using System.Text.Json;
using System.Text.Json.Nodes;

namespace KvPacket.Store;

/// <summary>
/// The files of a store directory: <c>store.json</c> (format and version), <c>writer.lock</c> (held by the single
/// writer; its pid in <c>writer.pid</c>), <c>log/</c> (FasterLog segments and commits) and <c>index.snapshot</c>.
/// </summary>
internal sealed class StoreDirectory : IDisposable
{
    /// <summary>The directory format this build writes and the newest it reads.</summary>
    public const int FormatVersion = 1;
    private const string FormatName = "kvpacket-store";

    private FileStream? _lock;

    private StoreDirectory(string path) => Path = path;

    public string Path { get; }
    /// <summary>log2 of FasterLog's page size, as the store was created with.</summary>
    public int LogPageSizeBits { get; private set; }
    /// <summary>log2 of the segment file size, as the store was created with.</summary>
    public int SegmentSizeBits { get; private set; }
    public string LogBase => System.IO.Path.Combine(Path, "log", "data");
    public string CommitDirectory => System.IO.Path.Combine(Path, "log", "commits");
    public string SnapshotPath => System.IO.Path.Combine(Path, "index.snapshot");
    private string FormatFile => System.IO.Path.Combine(Path, "store.json");
    private string LockFile => System.IO.Path.Combine(Path, "writer.lock");
    private string PidFile => System.IO.Path.Combine(Path, "writer.pid");

    /// <summary>Opens (creating it when writable and absent) the store at <paramref name="path"/>, checking its format and taking the writer lock unless read-only.</summary>
    /// <remarks>The log geometry is fixed when the store is created (from <paramref name="options"/>) and read back from
    /// <c>store.json</c> afterwards: addresses map to segment files by it.</remarks>
    public static StoreDirectory Open(string path, PacketStoreOptions options)
    {
        bool readOnly = options.ReadOnly;
        path = System.IO.Path.GetFullPath(path);
        var directory = new StoreDirectory(path);
        if (!File.Exists(directory.FormatFile))
        {
            if (readOnly) throw new StoreFormatException($"{path} is not a packet store (no store.json).");
            if (Directory.Exists(path) && Directory.EnumerateFileSystemEntries(path).Any())
                throw new StoreFormatException($"{path} is not empty and has no store.json: refusing to turn it into a packet store.");
            Directory.CreateDirectory(path);
            directory.TakeLock();
            directory.LogPageSizeBits = options.LogPageSizeBits;
            directory.SegmentSizeBits = options.SegmentSizeBits;
            File.WriteAllText(directory.FormatFile, new JsonObject
            {
                ["format"] = FormatName,
                ["version"] = FormatVersion,
                ["logPageSizeBits"] = directory.LogPageSizeBits,
                ["segmentSizeBits"] = directory.SegmentSizeBits,
            }.ToJsonString());
            return directory;
        }
        directory.CheckFormat();
        if (!readOnly) directory.TakeLock();
        return directory;
    }

    private void CheckFormat()
    {
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(FormatFile)); }
        catch (JsonException e) { throw new StoreFormatException($"{FormatFile} is not valid JSON: {e.Message}"); }
        if (node?["format"]?.GetValue<string>() != FormatName)
            throw new StoreFormatException($"{FormatFile} does not describe a packet store (format is not \"{FormatName}\").");
        int version = node["version"]?.GetValue<int>() ?? 0;
        if (version > FormatVersion)
            throw new StoreFormatException($"the store at {Path} has format version {version}; this build reads versions up to {FormatVersion}. Upgrade kvpacket to open it.");
        if (version < 1) throw new StoreFormatException($"{FormatFile} has no valid format version.");
        LogPageSizeBits = node["logPageSizeBits"]?.GetValue<int>() ?? 0;
        SegmentSizeBits = node["segmentSizeBits"]?.GetValue<int>() ?? 0;
        if (LogPageSizeBits is < 12 or > 30 || SegmentSizeBits < LogPageSizeBits || SegmentSizeBits > 40)
            throw new StoreFormatException($"{FormatFile} has an invalid log geometry (logPageSizeBits {LogPageSizeBits}, segmentSizeBits {SegmentSizeBits}).");
    }

    private void TakeLock()
    {
        try
        {
            // FileShare.None takes an exclusive advisory lock (flock) on Unix; the kernel drops it when the process dies.
            _lock = new FileStream(LockFile, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            string holder = File.Exists(PidFile) ? File.ReadAllText(PidFile).Trim() : "unknown";
            throw new StoreLockedException($"the packet store at {Path} is locked by pid {holder} (one writer at a time); open it read-only, or stop that process.");
        }
        File.WriteAllText(PidFile, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    public void Dispose()
    {
        _lock?.Dispose();
        _lock = null;
    }
}
