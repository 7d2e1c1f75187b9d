namespace KvPacket.Cli;

/// <summary>
/// The QA model that ships in the repository (models/kvqa-17m: config, bf16 safetensors, tokenizer and adapters), copied
/// beside the binary by the build so the demo needs nothing downloaded.
/// </summary>
internal static class ShippedModel
{
    /// <summary>The KV Packet header/trailer adapter file in the model directory.</summary>
    public const string KvPacketAdapter = "kvpacket-adapter.safetensors";

    /// <summary>The KVLink link-token adapter file in the model directory.</summary>
    public const string KvLinkAdapter = "kvlink-adapter.safetensors";

    /// <summary>The shipped model's directory beside the binary.</summary>
    public static string Directory
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "models", "kvqa-17m");
            return File.Exists(Path.Combine(path, "config.json")) ? path
                : throw new DirectoryNotFoundException($"{path}: the shipped model is missing (the build copies models/kvqa-17m there; give --model DIR)");
        }
    }
}
