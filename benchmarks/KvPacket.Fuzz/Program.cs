using KvPacket.Fuzz;
using SharpFuzz;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

// kvpacket-fuzz TARGET              run under afl-fuzz (benchmarks/fuzz.sh): each input through the target, out of process
// kvpacket-fuzz replay TARGET FILE… run inputs once and say what each gave (triage, and what the CI test does)
// kvpacket-fuzz seeds DIR           write small valid seed inputs for every target
FuzzTargets.RequestTokenizerPath = Environment.GetEnvironmentVariable("KVPACKET_FUZZ_TOKENIZER");
if (args is ["seeds", var seedDirectory])
{
    FuzzSeeds.Write(seedDirectory);
    return 0;
}
if (args.Length >= 2 && args[0] == "replay")
{
    foreach (string file in args[2..])
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        string outcome;
        try
        {
            var error = FuzzTargets.Run(args[1], File.ReadAllBytes(file));
            outcome = error is null ? "accepted" : $"{error.GetType().Name}: {error.Message}";
        }
        catch (Exception e) { outcome = $"FINDING {e.GetType().Name}: {e.Message} at {e.StackTrace?.Split('\n').FirstOrDefault()?.Trim()}"; }
        Console.WriteLine($"{file}: {outcome} ({started.Elapsed.TotalMilliseconds:F0} ms)");
    }
    return 0;
}
if (args.Length != 1 || !FuzzTargets.Names.Contains(args[0]))
{
    Console.Error.WriteLine($"usage: kvpacket-fuzz TARGET | replay TARGET FILE…   (targets: {string.Join(", ", FuzzTargets.Names)})");
    return 2;
}
string target = args[0];
Fuzzer.OutOfProcess.Run(stream =>
{
    using var buffer = new MemoryStream();
    stream.CopyTo(buffer);
    FuzzTargets.Run(target, buffer.ToArray());
});
return 0;
