using Xunit;

namespace KvPacket.Daemon.Tests;

/// <summary>The daemon's flags.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class DaemonOptionsTests
{
    [Fact]
    public void Flags_parse_help_is_recognised_and_an_unknown_flag_points_to_it()
    {
        var options = DaemonOptions.Parse(["--model", "m", "--store", "s", "--served-model-name", "reader", "--tcp", "8000"]);
        Assert.Equal(("m", "s", "reader", 8000), (options.Model, options.Store, options.ServedModelName, options.Tcp!.Value));
        Assert.True(DaemonOptions.WantsHelp(["--model", "m", "--help"]));
        Assert.Contains("--served-model-name", DaemonOptions.Usage);
        Assert.Contains("kvpacketd --help", Assert.Throws<ArgumentException>(() => DaemonOptions.Parse(["--model", "m", "--store", "s", "--port", "1"])).Message);
    }

    [Fact]
    public void The_shared_tier_is_taken_from_a_flag_or_the_config_file_and_a_bad_address_is_named()
    {
        var flags = DaemonOptions.Parse(["--model", "m", "--store", "s", "--shared-tier", "redis://127.0.0.1:6379", "--shared-tier-copy"]);
        Assert.Equal(("redis://127.0.0.1:6379", true), (flags.SharedTier, flags.SharedTierCopy));
        string config = Path.Combine(Path.GetTempPath(), $"kvpacketd-{Guid.NewGuid():N}.json");
        File.WriteAllText(config, """{"model": "m", "store": "s", "sharedTier": "garnet.local:6379"}""");
        try { Assert.Equal("garnet.local:6379", DaemonOptions.Parse(["--config", config]).SharedTier); }
        finally { File.Delete(config); }
        var error = Assert.Throws<ArgumentException>(() => DaemonOptions.Parse(["--model", "m", "--store", "s", "--shared-tier", "http://x:1"]));
        Assert.StartsWith("--shared-tier:", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_device_and_the_resident_tier_are_flags_and_a_bad_value_is_named()
    {
        var defaults = DaemonOptions.Parse(["--model", "m", "--store", "s"]);
        Assert.Equal(("auto", (int?)null), (defaults.Device, defaults.ResidentBlocks));
        var flags = DaemonOptions.Parse(["--model", "m", "--store", "s", "--device", "cpu", "--resident-blocks", "0"]);
        Assert.Equal(("cpu", (int?)0), (flags.Device, flags.ResidentBlocks));
        Assert.StartsWith("--device:", Assert.Throws<ArgumentException>(() => DaemonOptions.Parse(["--model", "m", "--store", "s", "--device", "tpu"])).Message, StringComparison.Ordinal);
        Assert.Contains("--resident-blocks", Assert.Throws<ArgumentException>(() => DaemonOptions.Parse(["--model", "m", "--store", "s", "--resident-blocks", "-1"])).Message);
        Assert.Contains("--device cpu|cuda|ilgpu|auto", DaemonOptions.Usage);
    }

    [Fact]
    public void Packet_storage_is_f16_by_default_and_a_bad_value_is_named()
    {
        Assert.Equal("f16", DaemonOptions.Parse(["--model", "m", "--store", "s"]).PacketStorage);
        Assert.Equal("int8", DaemonOptions.Parse(["--model", "m", "--store", "s", "--packet-storage", "int8"]).PacketStorage);
        Assert.Contains("--packet-storage must be f16, f32 or int8, not 'q4'",
            Assert.Throws<ArgumentException>(() => DaemonOptions.Parse(["--model", "m", "--store", "s", "--packet-storage", "q4"])).Message);
    }
}
