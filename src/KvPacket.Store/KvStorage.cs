namespace KvPacket.Store;

/// <summary>How a packet's K and V values are stored on disk.</summary>
public enum KvStorage : byte
{
    /// <summary>IEEE binary16, as the engine's default KV cache holds them (loads are a plain copy).</summary>
    F16 = 1,
    /// <summary>IEEE binary32.</summary>
    F32 = 2,
    /// <summary>int8 with one f32 scale (max |x| / 127) per layer, K/V, KV head and block: about half of f16's bytes.</summary>
    Int8 = 3,
}
