using System.Text.Json;
using System.Text.Json.Serialization;

namespace KvPacket.Cli.Bench;

/// <summary>One benchmark's figures, written as JSON under benchmarks/results/.</summary>
internal sealed record BenchResult(
    string Benchmark,
    string Model,
    string WeightType,
    string KvType,
    int Threads,
    IReadOnlyDictionary<string, double> Figures,
    string Machine,
    DateTimeOffset When)
{
    // A figure that came out NaN (a failed check's difference) is written as "NaN", not lost with the whole run.
    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.Never, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public void Save(string directory)
    {
        Directory.CreateDirectory(directory);
        string name = $"{Benchmark}-{Model}-{WeightType}.json".ToLowerInvariant();
        File.WriteAllText(Path.Combine(directory, name), JsonSerializer.Serialize(this, Json));
    }

    public void Print()
    {
        Console.WriteLine($"{Benchmark} · {Model} · weights {WeightType} · KV {KvType} · {Threads} threads · {Machine}");
        foreach (var (key, value) in Figures) Console.WriteLine($"  {key,-34} {value,16:G6}");
    }

    public static string DescribeMachine() =>
        $"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, " +
        $"AVX-512 {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}";
}
