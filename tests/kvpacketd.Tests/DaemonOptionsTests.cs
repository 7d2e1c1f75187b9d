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
}
