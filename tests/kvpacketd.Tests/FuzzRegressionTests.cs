using FsCheck.Xunit;
using KvPacket.Fuzz;
using Xunit;

namespace KvPacket.Tests;

/// <summary>
/// Hostile bytes through every reader of untrusted input (benchmarks/KvPacket.Fuzz): every input the fuzzers ever
/// flagged (tests/fixtures/fuzz) and generated mutations of valid files must end in the reader's own format error, fast.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class FuzzRegressionTests
{
    private static readonly Lazy<string> Seeds = new(() =>
    {
        string directory = Path.Combine(Path.GetTempPath(), $"kvpacket-fuzz-seeds-{Environment.ProcessId}");
        FuzzSeeds.Write(directory);
        return directory;
    });

    static FuzzRegressionTests() =>
        FuzzTargets.RequestTokenizer = Core.Tokenization.ByteLevelBpeTokenizer.LoadHuggingFace(Fixtures.PathOf("bpe-gpt2/tokenizer.json"));

    /// <summary>Runs an input, failing on anything but the reader's format error or acceptance, and on taking over 5 s.</summary>
    private static void Replay(string target, byte[] input, string what)
    {
        var run = Task.Run(() => FuzzTargets.Run(target, input));
        Assert.True(run.Wait(TimeSpan.FromSeconds(5)), $"{what}: still running after 5 s");
    }

    [Fact]
    public void Every_input_the_fuzzers_ever_flagged_ends_in_its_readers_format_error_quickly()
    {
        int replayed = 0;
        foreach (string folder in Directory.GetDirectories(Fixtures.PathOf("fuzz")))
        {
            string target = Path.GetFileName(folder);
            Assert.Contains(target, FuzzTargets.Names);
            foreach (string file in Directory.GetFiles(folder))
            {
                Replay(target, File.ReadAllBytes(file), file);
                replayed++;
            }
        }
        Assert.True(replayed >= 9, $"{replayed} inputs replayed");
    }

    [Fact]
    public void Every_targets_seed_is_accepted()
    {
        foreach (string target in FuzzTargets.Names)
            foreach (string file in Directory.GetFiles(Path.Combine(Seeds.Value, target)))
                if (target != "request") Assert.Null(FuzzTargets.Run(target, File.ReadAllBytes(file)));
    }

    /// <summary>A seed with a run of bytes overwritten (by boundary values or the generated ones), bytes inserted, or the tail cut.</summary>
    [Property(MaxTest = 1500, Replay = "(2026,1131)")]
    public void Mutated_valid_files_give_only_format_errors(byte targetIndex, int position, byte[] patch, byte kind)
    {
        string target = FuzzTargets.Names[targetIndex % FuzzTargets.Names.Length];
        string[] seeds = Directory.GetFiles(Path.Combine(Seeds.Value, target));
        byte[] seed = File.ReadAllBytes(seeds[(position & 0x7fffffff) % seeds.Length]);
        int at = seed.Length == 0 ? 0 : (position & 0x7fffffff) % seed.Length;
        patch ??= [];
        byte[] input = (kind % 4) switch
        {
            0 => [.. seed[..at], .. patch, .. seed[Math.Min(seed.Length, at + patch.Length)..]],               // overwrite
            1 => [.. seed[..at], .. patch, .. seed[at..]],                                                       // insert
            2 => seed[..at],                                                                                     // truncate
            _ => [.. seed[..at], .. BoundaryValue(kind), .. seed[Math.Min(seed.Length, at + 8)..]],             // a boundary integer
        };
        Replay(target, input, $"{target} seed mutated at {at} (kind {kind % 4}, {patch.Length} bytes)");
    }

    private static byte[] BoundaryValue(byte kind) => (kind / 4 % 6) switch
    {
        0 => BitConverter.GetBytes(-1L),
        1 => BitConverter.GetBytes(long.MaxValue),
        2 => BitConverter.GetBytes((long)int.MaxValue),
        3 => BitConverter.GetBytes(long.MinValue),
        4 => BitConverter.GetBytes(-(1L << 40)),
        _ => BitConverter.GetBytes(0x7FC00000_7FC00000L),   // NaN floats
    };
}
