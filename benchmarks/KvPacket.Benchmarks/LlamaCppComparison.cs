using System.Diagnostics;
using System.Globalization;
using KvPacket.Compute.Threading;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Core.Numerics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using LLama;
using LLama.Common;
using LLama.Native;

namespace KvPacket.Benchmarks;

/// <summary>
/// Decode and prefill, ours against llama.cpp (LLamaSharp 0.30's CPU backend) on the same GGUF file in the same
/// process, rounds alternating, greedy, the same threads; medians, their ratio, and decode against the read-bandwidth
/// roofline measured in the same run (weight bytes per token ÷ bytes/s of a vectorised read of 1 GiB on every thread).
/// Ours loads the file into memory (<see cref="FileBytes.Load(string)"/>); llama.cpp reads it into memory too by default
/// (<c>--llamacpp-load None</c>, its <c>--no-mmap</c>), or maps it (<c>MemoryMap</c>, LLamaSharp's default).
/// <c>dotnet run -c Release --project benchmarks/KvPacket.Benchmarks -- vs-llamacpp --shape qwen2.5-0.5b --dtype F16</c>
/// </summary>
internal static class LlamaCppComparison
{
    public static int Run(string[] args)
    {
        string Option(string name, string fallback) => Array.IndexOf(args, name) is int i and >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
        var card = ModelCard.Find(Option("--shape", "qwen2.5-0.5b"));
        var type = QuantisationMix.Parse(Option("--dtype", "F16"));
        int threads = int.Parse(Option("--threads", Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
        int tokens = int.Parse(Option("--tokens", "32"), CultureInfo.InvariantCulture);
        int promptTokens = int.Parse(Option("--prompt-tokens", "128"), CultureInfo.InvariantCulture);
        int rounds = int.Parse(Option("--rounds", "5"), CultureInfo.InvariantCulture);
        var load = Enum.Parse<LLamaLoadMode>(Option("--llamacpp-load", nameof(LLamaLoadMode.None)), ignoreCase: true);
        string gguf = Synthesise(card, type);
        int[] prompt = new SeededRandom(7).NextTokens(promptTokens, 3, card.Config.VocabSize);

        using var checkpoint = CheckpointLoader.Load(gguf);
        long weightBytes = WeightBytes(checkpoint);
        using var pool = new WorkerPool(threads);
        using var model = new Transformer(checkpoint, new TransformerOptions { Threads = threads, KvCacheTokens = promptTokens + tokens + 16, MaxBatchTokens = promptTokens });
        var generator = new Generator(model);
        var parameters = new ModelParams(gguf) { ContextSize = (uint)(promptTokens + tokens + 16), Threads = threads, BatchThreads = threads, BatchSize = (uint)promptTokens, LoadMode = load };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);

        var ourDecode = new List<double>(); var theirDecode = new List<double>();
        var ourPrefill = new List<double>(); var theirPrefill = new List<double>();
        var bandwidth = new List<double>();
        for (int round = -1; round < rounds; round++) // round -1 warms both up
        {
            // A pause between the two: llama.cpp's worker threads poll for a while after a decode, and would take the
            // cores from ours if ours started at once. The order alternates round by round, so neither side always runs
            // in the same place: on these VMs a run's place moved it by a third (ours 24-35 tok/s first after the
            // bandwidth pass, 27-39 right after that; vs-llamacpp-2core-2026-12-01-third-session.txt).
            GenerationStats ours = default!;
            double prefill = 0, decode = 0;
            for (int turn = 0; turn < 2; turn++)
            {
                Thread.Sleep(1000);
                if ((turn == 0) == (round % 2 == 0)) ours = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = tokens, StopTokens = [] });
                else (prefill, decode) = LlamaCpp(context, prompt, tokens);
            }
            Thread.Sleep(1000);
            double read = MachinePeaks.ReadBandwidth(pool, repeats: 3); // the best of three: what the memory can give
            if (round < 0) continue;
            ourDecode.Add(ours.DecodeTokensPerSecond); ourPrefill.Add(ours.PrefillTokensPerSecond);
            theirDecode.Add(decode); theirPrefill.Add(prefill);
            bandwidth.Add(read);
            Console.Error.WriteLine($"  round {round} ({(round % 2 == 0 ? "ours" : "llama.cpp")} first): decode ours {ours.DecodeTokensPerSecond:F1} / llama.cpp {decode:F1} tok/s; prefill ours {ours.PrefillTokensPerSecond:F0} / llama.cpp {prefill:F0} tok/s; read {read / 1e9:F1} GB/s");
        }
        double roofline = Median(bandwidth) / weightBytes;
        string mix = string.Join(", ", checkpoint.Layers.SelectMany(l => new[] { l.Query, l.Key, l.Value, l.Output, l.Gate, l.Up, l.Down }).Append(checkpoint.Classifier)
            .GroupBy(w => w.Type).Select(g => $"{g.Count()} {g.Key}"));
        Console.WriteLine($"vs llama.cpp · {card.Name} · {type.Name} weights ({weightBytes / 1e9:F2} GB: {mix} matrices) · {threads} threads · {rounds} rounds · prompt {promptTokens}, {tokens} new tokens · {Environment.ProcessorCount} cores · llama.cpp load {load}");
        Console.WriteLine($"  decode  tok/s  ours {Median(ourDecode),8:F2}  llama.cpp {Median(theirDecode),8:F2}  ratio {Median(ourDecode) / Median(theirDecode):F2}");
        Console.WriteLine($"  prefill tok/s  ours {Median(ourPrefill),8:F1}  llama.cpp {Median(theirPrefill),8:F1}  ratio {Median(ourPrefill) / Median(theirPrefill):F2}");
        Console.WriteLine($"  read roofline {roofline:F2} tok/s ({Median(bandwidth) / 1e9:F1} GB/s): ours {Median(ourDecode) / roofline:F2}, llama.cpp {Median(theirDecode) / roofline:F2} of it");
        return 0;
    }

    /// <summary>Prefill of <paramref name="prompt"/> in one batch, then <paramref name="count"/> greedy single-token steps; tokens/s of each.</summary>
    private static (double Prefill, double Decode) LlamaCpp(LLamaContext context, int[] prompt, int count)
    {
        context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        long start = Stopwatch.GetTimestamp();
        Check(context.NativeHandle.Decode(batch));
        int next = ArgMax(context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
        double prefill = prompt.Length / Stopwatch.GetElapsedTime(start).TotalSeconds;
        start = Stopwatch.GetTimestamp();
        for (int position = prompt.Length; position < prompt.Length + count - 1; position++)
        {
            batch.Clear();
            batch.Add((LLamaToken)next, position, LLamaSeqId.Zero, true);
            Check(context.NativeHandle.Decode(batch));
            next = ArgMax(context.NativeHandle.GetLogitsIth(0));
        }
        return (prefill, (count - 1) / Stopwatch.GetElapsedTime(start).TotalSeconds);
    }

    private static void Check(DecodeResult result)
    {
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {result}");
    }

    private static int ArgMax(Span<float> logits)
    {
        int best = 0;
        for (int v = 1; v < logits.Length; v++) if (logits[v] > logits[best]) best = v;
        return best;
    }

    /// <summary>The card synthesised once (seeded random weights) and written as GGUF, cached under the temp directory.</summary>
    private static string Synthesise(ModelCard card, QuantisationMix type)
    {
        string directory = Path.Combine(Path.GetTempPath(), "kvpacket-synth", $"{card.Name}-{type.Name}-seed1".ToLowerInvariant());
        string gguf = directory + ".gguf";
        if (File.Exists(gguf)) return gguf;
        if (!File.Exists(Path.Combine(directory, "model.safetensors")))
        {
            Console.Error.WriteLine($"synthesising {card.Name} ({type.Name}) into {directory} …");
            var stored = type.TypeOf(TensorNames.Gguf.Classifier, -1, card.Config.LayerCount);
            SyntheticCheckpoint.Write(card.Config, stored.IsBlockQuantised() ? DType.BF16 : stored, directory + ".partial", seed: 1);
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
            Directory.Move(directory + ".partial", directory);
        }
        using var checkpoint = CheckpointLoader.Load(directory);
        CheckpointExporter.WriteGguf(checkpoint, gguf + ".partial", type);
        File.Move(gguf + ".partial", gguf);
        return gguf;
    }

    /// <summary>Bytes of weights one decode step reads: every matrix once (the embedding row excepted, the classifier included).</summary>
    private static long WeightBytes(Checkpoint checkpoint)
    {
        long bytes = 0;
        foreach (var layer in checkpoint.Layers)
            foreach (var w in new[] { layer.Query, layer.Key, layer.Value, layer.Output, layer.Gate, layer.Up, layer.Down })
                bytes += w.Type.BytesFor(w.ElementCount);
        var classifier = checkpoint.Classifier;
        return bytes + classifier.Type.BytesFor(classifier.ElementCount);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
