using KvPacket.Core.Model;
using KvPacket.Core.Storage;

namespace KvPacket.Store;

/// <summary>
/// The store's lookup tables, rebuilt from the log (replaying manifests, tombstones and adapter records in log order)
/// and persisted as a snapshot that covers the log up to <see cref="CoveredUntil"/>, so opening a store scans only
/// the tail. Not synchronised: the store guards it.
/// </summary>
internal sealed class PacketIndex
{
    private const uint SnapshotMagic = 0x4950564B; // "KVPI"
    private const int SnapshotVersion = 2;

    public Dictionary<PacketId, StoredPacket> Packets { get; } = new();
    public Dictionary<(string Name, int Version), StoredAdapter> Adapters { get; } = new();

    /// <summary>The log begin address the index was built against.</summary>
    public long BeginAddress { get; set; }

    /// <summary>Log records below this address are reflected in the index.</summary>
    public long CoveredUntil { get; set; }

    /// <summary>Bytes of live records.</summary>
    public long LiveBytes => Packets.Values.Sum(p => p.Info.StoredBytes) + Adapters.Values.Sum(a => (long)a.Record.Length);

    /// <summary>Whether two indexes hold the same packets and adapters at the same addresses.</summary>
    public bool SameContentAs(PacketIndex other) =>
        Packets.Count == other.Packets.Count && Adapters.Count == other.Adapters.Count
        && Packets.All(p => other.Packets.TryGetValue(p.Key, out var o) && o.Info == p.Value.Info && o.Manifest == p.Value.Manifest && o.Pages.AsSpan().SequenceEqual(p.Value.Pages))
        && Adapters.All(a => other.Adapters.TryGetValue(a.Key, out var o) && o == a.Value);

    /// <summary>Writes the snapshot to <paramref name="path"/> atomically (temp file, fsync, rename).</summary>
    public void Save(string path)
    {
        using var buffer = new MemoryStream();
        using (var writer = new BinaryWriter(buffer, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            writer.Write(SnapshotMagic);
            writer.Write(SnapshotVersion);
            writer.Write(BeginAddress);
            writer.Write(CoveredUntil);
            writer.Write(Packets.Count);
            foreach (var packet in Packets.Values)
            {
                var info = packet.Info;
                Write(writer, info.Id.Value);
                Write(writer, info.Model.Value);
                writer.Write(info.Adapter.Name);
                writer.Write(info.Adapter.Version);
                writer.Write((byte)info.Storage);
                writer.Write(info.DocumentTokens);
                writer.Write(info.KvTokens);
                writer.Write(info.PositionSpan);
                writer.Write(info.BlockSize);
                writer.Write(info.StoredBytes);
                Write(writer, packet.Manifest);
                writer.Write(packet.Pages.Length);
                foreach (var page in packet.Pages) Write(writer, page);
            }
            writer.Write(Adapters.Count);
            foreach (var adapter in Adapters.Values)
            {
                writer.Write(adapter.Adapter.Name);
                writer.Write(adapter.Adapter.Version);
                Write(writer, adapter.Model.Value);
                Write(writer, adapter.Record);
            }
        }
        ChecksummedFile.Write(path, buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
    }

    /// <summary>Loads the snapshot at <paramref name="path"/>, or says in <paramref name="error"/> why it cannot be used (null error and null index when there is none).</summary>
    public static PacketIndex? TryLoad(string path, out string? error)
    {
        error = null;
        if (!File.Exists(path)) return null;
        if (ChecksummedFile.TryRead(path) is not { } bytes)
        {
            error = $"index snapshot {path} is damaged (checksum mismatch)";
            return null;
        }
        try
        {
            using var reader = new BinaryReader(new MemoryStream(bytes));
            if (reader.ReadUInt32() != SnapshotMagic || reader.ReadInt32() != SnapshotVersion) { error = $"index snapshot {path} has an unknown format"; return null; }
            var index = new PacketIndex { BeginAddress = reader.ReadInt64(), CoveredUntil = reader.ReadInt64() };
            int packets = reader.ReadInt32();
            for (int i = 0; i < packets; i++)
            {
                var info = new PacketInfo(new PacketId(ReadU128(reader)), new ModelFingerprint(ReadU128(reader)),
                    new AdapterRef(reader.ReadString(), reader.ReadInt32()), (KvStorage)reader.ReadByte(),
                    reader.ReadInt32(), reader.ReadInt32(), reader.ReadInt32(), reader.ReadInt32(), reader.ReadInt64());
                var manifest = ReadRef(reader);
                var pages = new RecordRef[reader.ReadInt32()];
                for (int p = 0; p < pages.Length; p++) pages[p] = ReadRef(reader);
                index.Packets[info.Id] = new StoredPacket(info, manifest, pages);
            }
            int adapters = reader.ReadInt32();
            for (int i = 0; i < adapters; i++)
            {
                var adapter = new AdapterRef(reader.ReadString(), reader.ReadInt32());
                index.Adapters[(adapter.Name, adapter.Version)] = new StoredAdapter(adapter, new ModelFingerprint(ReadU128(reader)), ReadRef(reader));
            }
            return index;
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or OverflowException or OutOfMemoryException)
        {
            error = $"index snapshot {path} is malformed ({e.Message})";
            return null;
        }
    }

    private static void Write(BinaryWriter writer, RecordRef record)
    {
        writer.Write(record.Address);
        writer.Write(record.Length);
    }

    private static void Write(BinaryWriter writer, UInt128 value)
    {
        writer.Write((ulong)value);
        writer.Write((ulong)(value >> 64));
    }

    private static UInt128 ReadU128(BinaryReader reader)
    {
        ulong lower = reader.ReadUInt64();
        return new UInt128(reader.ReadUInt64(), lower);
    }

    private static RecordRef ReadRef(BinaryReader reader) => new(reader.ReadInt64(), reader.ReadInt32());
}
