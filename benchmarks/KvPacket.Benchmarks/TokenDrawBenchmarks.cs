using BenchmarkDotNet.Attributes;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Numerics;

namespace KvPacket.Benchmarks;

/// <summary>One token drawn on the CPU from a row of logits like a language model's (noise and a few strong candidates).</summary>
[MemoryDiagnoser]
public class TokenDrawBenchmarks
{
    private float[] _logits = null!;
    private TokenDraw.Scratch _scratch = null!;
    private SeededRandom _random;

    /// <summary>Logits per row: Llama 2's and Llama 3's vocabularies.</summary>
    [Params(32000, 128256)]
    public int Vocab { get; set; }

    /// <summary>The rule: temperature alone, with top-p, with top-k and top-p.</summary>
    [Params("T 1", "T 0.8 top-p 0.95", "T 0.7 top-k 50 top-p 0.9")]
    public string Rule { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        _random = new SeededRandom(3);
        _logits = new float[Vocab];
        for (int i = 0; i < Vocab; i++) _logits[i] = (_random.NextSingle() + _random.NextSingle() + _random.NextSingle() - 1.5f) * 5;
        for (int j = 0; j < 20; j++) _logits[(int)(_random.NextUInt64() % (ulong)Vocab)] += 6 + 6 * _random.NextSingle();
        _scratch = new TokenDraw.Scratch(Vocab);
    }

    [Benchmark]
    public int Draw()
    {
        var draw = Rule switch
        {
            "T 1" => new TokenDraw(1f, 0, 1f, _random.NextUInt64()),
            "T 0.8 top-p 0.95" => new TokenDraw(0.8f, 0, 0.95f, _random.NextUInt64()),
            _ => new TokenDraw(0.7f, 50, 0.9f, _random.NextUInt64()),
        };
        return draw.Choose(_logits, _scratch);
    }
}
