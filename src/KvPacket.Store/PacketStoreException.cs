namespace KvPacket.Store;

/// <summary>A packet store operation failed; the message names the store, the packet or record, and what is wrong.</summary>
public class PacketStoreException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Another process holds the store's writer lock.</summary>
public sealed class StoreLockedException(string message) : PacketStoreException(message);

/// <summary>The store directory has a format this build cannot read (a newer version, or not a store).</summary>
public sealed class StoreFormatException(string message) : PacketStoreException(message);

/// <summary>A write would take the store past its capacity; nothing was written.</summary>
public sealed class StoreFullException(string message) : PacketStoreException(message);

/// <summary>A stored record failed its checks (checksum, header, shape); its data was not returned.</summary>
public sealed class CorruptRecordException(string message) : PacketStoreException(message);

/// <summary>A packet was built by a different model than the one asking for it.</summary>
public sealed class ModelMismatchException(string message) : PacketStoreException(message);
