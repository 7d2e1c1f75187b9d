using System.Diagnostics;
using KvPacket.Compute.Cuda;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Numerics;

namespace KvPacket.Cli.Bench;

/// <summary>
/// <c>kvpacket cuda draw</c>: <see cref="TokenDraw"/>'s rule on the GPU (<see cref="CudaTokenDraws"/>) against the same
/// rule on the host — token for token over many rows and rules, and as a distribution against exact probabilities — and
/// its time (CUDA events) beside the host path it replaces (the logits copied back, the draw on the CPU).
/// </summary>
internal static class TokenDrawCheck
{
    private static readonly (string Name, float T, int K, float P)[] Rules =
    [
        ("top-k 1 (the argmax)", 1, 1, 1), ("T 1", 1, 0, 1), ("T 0.8 top-p 0.95", 0.8f, 0, 0.95f), ("T 0.7 top-k 50 top-p 0.9", 0.7f, 50, 0.9f),
        ("T 1.5 top-k 1000", 1.5f, 1000, 1), ("T 0.05 top-p 0.5", 0.05f, 0, 0.5f),
    ];

    public static int Run(CudaDevice device, int vocab, int repeats, string output)
    {
        const int Rows = 64;
        var random = new SeededRandom(21);
        var logits = new float[Rows * vocab];
        using var buffer = device.Allocate(4L * logits.Length);
        using var draws = new CudaTokenDraws(device, Rows);
        var scratch = new TokenDraw.Scratch(vocab);
        var rules = new TokenDraw[Rows];
        var gpu = new int[Rows];
        bool ok = true;
        Console.WriteLine($"{device.Name} (sm_{device.Architecture}); vocabulary {vocab}, {Rows} rows a launch");

        // Token for token: rows like a language model's (noise and a few strong candidates) and rows of ties.
        foreach (bool ties in new[] { false, true })
        {
            Fill(logits, vocab, ref random, ties);
            device.Upload<float>(logits, buffer);
            foreach (var (name, t, k, p) in Rules)
            {
                int differ = 0, unexplained = 0, total = 0;
                for (int launch = 0; launch < 16; launch++)
                {
                    for (int r = 0; r < Rows; r++) rules[r] = new TokenDraw(t, k, p, random.NextUInt64());
                    draws.Choose(buffer, vocab, rules, gpu);
                    for (int r = 0; r < Rows; r++, total++)
                    {
                        var row = logits.AsSpan(r * vocab, vocab);
                        if (gpu[r] == rules[r].Choose(row, scratch)) continue;
                        differ++;
                        // exp differs in its last bits between the GPU and the host, which moves every boundary of the walk
                        // by about that much: a draw may then land on the neighbouring token. Such a flip is what the host
                        // draws with the ticket moved by 10⁻⁹ to 10⁻⁶ of the kept weight; anything else is a real difference.
                        ulong bits = rules[r].Bits;
                        bool boundary = false;
                        for (double nudge = 1e-9; nudge <= 1e-6 && !boundary; nudge *= 10)
                        {
                            ulong by = (ulong)(nudge * 18446744073709551616.0);
                            boundary = (bits >= by && gpu[r] == (rules[r] with { Bits = bits - by }).Choose(row, scratch))
                                       || (bits <= ulong.MaxValue - by && gpu[r] == (rules[r] with { Bits = bits + by }).Choose(row, scratch));
                        }
                        if (!boundary) unexplained++;
                    }
                }
                bool pass = unexplained == 0;
                ok &= pass;
                Console.WriteLine($"  {(ties ? "tied rows" : "model-like rows"),-15} {name,-26}: {differ} of {total} draws differ from the host, " +
                                  $"{unexplained} of them not at a boundary → {(pass ? "PASS" : "FAIL")} (none allowed)");
            }
        }

        // As a distribution: one row drawn 51,200 times against the probabilities of its kept tokens.
        Fill(logits, vocab, ref random, ties: false);
        for (int r = 1; r < Rows; r++) logits.AsSpan(0, vocab).CopyTo(logits.AsSpan(r * vocab, vocab));
        device.Upload<float>(logits, buffer);
        foreach (var (name, t, k, p) in Rules[2..5])
        {
            var expected = Probabilities(logits.AsSpan(0, vocab), t, k, p);
            var counts = new Dictionary<int, int>();
            const int Launches = 800;
            for (int launch = 0; launch < Launches; launch++)
            {
                for (int r = 0; r < Rows; r++) rules[r] = new TokenDraw(t, k, p, random.NextUInt64());
                draws.Choose(buffer, vocab, rules, gpu);
                foreach (int token in gpu) counts[token] = counts.GetValueOrDefault(token) + 1;
            }
            double n = Launches * Rows, worst = 0, distance = 0;
            int outside = counts.Keys.Count(token => !expected.ContainsKey(token));
            foreach (var (token, probability) in expected)
            {
                double frequency = counts.GetValueOrDefault(token) / n;
                distance += Math.Abs(frequency - probability) / 2;
                worst = Math.Max(worst, Math.Abs(frequency - probability) / Math.Sqrt(probability * (1 - probability) / n + 1e-12));
            }
            bool pass = outside == 0 && worst < 5;
            ok &= pass;
            Console.WriteLine($"  distribution, {name,-26}: {expected.Count} tokens kept, {outside} drawn outside them, largest deviation {worst:F2} σ, " +
                              $"total variation {distance:F4} over {n:N0} draws → {(pass ? "PASS" : "FAIL")} (< 5 σ)");
        }

        // Time: the GPU draw (ids back) vs the logits copied back and drawn on the host, 1 and 32 rows.
        Fill(logits, vocab, ref random, ties: false);
        device.Upload<float>(logits, buffer);
        var figures = new Dictionary<string, double>();
        var hostLogits = new float[32 * vocab];
        foreach (int rows in new[] { 1, 32 })
            foreach (var (name, t, k, p) in Rules[..4])
            {
                for (int r = 0; r < rows; r++) rules[r] = new TokenDraw(t, k, p, random.NextUInt64());
                for (int w = 0; w < 5; w++) draws.Choose(buffer, vocab, rules.AsSpan(0, rows), gpu);
                double deviceMs = Statistics.Median(device.Time(() => draws.Choose(buffer, vocab, rules.AsSpan(0, rows), gpu), repeats));
                var hostMs = new double[repeats];
                for (int i = 0; i < repeats; i++)
                {
                    long start = Stopwatch.GetTimestamp();
                    device.Download(buffer, hostLogits.AsSpan(0, rows * vocab));
                    for (int r = 0; r < rows; r++) gpu[r] = rules[r].Choose(hostLogits.AsSpan(r * vocab, vocab), scratch);
                    hostMs[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                }
                double host = Statistics.Median(hostMs);
                string key = name.Replace(' ', '_').Replace('.', 'p');
                figures[$"draw_{rows}rows_{key}_gpu_ms"] = deviceMs;
                figures[$"draw_{rows}rows_{key}_host_ms"] = host;
                Console.WriteLine($"  {rows,2} row(s), {name,-26}: on the GPU {deviceMs * 1e3,8:F1} µs; logits to the host and drawn there {host * 1e3,9:F1} µs ({host / deviceMs:F1}×)");
            }
        var result = new BenchResult("cuda-token-draw", $"vocabulary{vocab}", "F32", "-", 1, figures, $"{device.Name} sm_{device.Architecture}", DateTimeOffset.UtcNow);
        result.Save(output);
        Console.WriteLine(ok ? "token draws: PASS" : "token draws: FAIL");
        return ok ? 0 : 1;
    }

    /// <summary>Rows of logits: noise of σ 2.5 with twenty strong candidates (+6 to +12), or values on a coarse grid (long ties).</summary>
    private static void Fill(float[] logits, int vocab, ref SeededRandom random, bool ties)
    {
        for (int start = 0; start < logits.Length; start += vocab)
        {
            var row = logits.AsSpan(start, vocab);
            for (int i = 0; i < vocab; i++)
            {
                double u = Math.Max(random.NextSingle(), 1e-7), v = random.NextSingle();
                double gaussian = Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v);
                row[i] = ties ? MathF.Round((float)gaussian * 2) * 0.5f : (float)(gaussian * 2.5);
            }
            for (int j = 0; j < 20; j++) row[(int)(random.NextUInt64() % (ulong)vocab)] += 6 + 6 * random.NextSingle();
        }
    }

    /// <summary>The kept tokens' probabilities by the rule's definition: sorted by logit, top-k, then the prefix reaching p of the whole.</summary>
    private static Dictionary<int, double> Probabilities(ReadOnlySpan<float> logits, float temperature, int topK, float topP)
    {
        float max = float.MinValue;
        foreach (float x in logits) max = Math.Max(max, x);
        var weight = new double[logits.Length];
        double total = 0;
        for (int i = 0; i < logits.Length; i++) total += weight[i] = Math.Exp((logits[i] - max) / (double)temperature);
        var values = logits.ToArray();
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => values[i]).ThenBy(i => i).ToArray();
        int keep = topK > 0 ? Math.Min(topK, order.Length) : order.Length;
        double mass = 0;
        for (int j = 0; j < keep && topP < 1; j++)
        {
            mass += weight[order[j]] / total;
            if (mass >= topP) keep = j + 1;
        }
        double kept = order[..keep].Sum(i => weight[i]);
        return order[..keep].ToDictionary(i => i, i => weight[i] / kept);
    }
}
