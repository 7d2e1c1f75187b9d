using System.IO.Hashing;
using System.Text;
using KvPacket.Engine.Rag;

namespace KvPacket.Store;

/// <summary>Which adapter (name and version) a packet was built with; <see cref="None"/> for a plain packet.</summary>
public readonly record struct AdapterRef(string Name, int Version)
{
    /// <summary>No adapter: the plain document.</summary>
    public static AdapterRef None => new("", 0);

    /// <summary>The reference to <paramref name="adapter"/>, or <see cref="None"/>.</summary>
    public static AdapterRef Of(Adapter? adapter) => adapter is null ? None : new(adapter.Id, adapter.Version);

    /// <summary>64-bit hash of the name (0 for no adapter), as stored in record headers.</summary>
    public ulong Hash => string.IsNullOrEmpty(Name) ? 0 : XxHash64.HashToUInt64(Encoding.UTF8.GetBytes(Name));

    /// <inheritdoc />
    public override string ToString() => string.IsNullOrEmpty(Name) ? "(none)" : $"{Name}@{Version}";
}
