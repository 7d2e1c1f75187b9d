using System.CommandLine;
using System.Diagnostics;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket quantize</c>: write any checkpoint we read as a GGUF file of a chosen weight type, as llama.cpp reads it.</summary>
internal static class QuantizeCommand
{
    private static readonly DType[] FileTypes = [DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q6_K, DType.Q5_K, DType.Q4_K, DType.Q4_0];

    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Checkpoint to read (llama2.c .bin, Hugging Face directory, GGUF)", Required = true };
        var type = new Option<DType>("--type") { Description = $"Matrix type: {string.Join(", ", FileTypes)}", DefaultValueFactory = _ => DType.Q4_K };
        var output = new Option<string>("--out", "-o") { Description = "GGUF file to write", Required = true };
        var command = new Command("quantize", "Write a checkpoint as GGUF with its matrices in one type (rows that are not whole blocks fall back: q4_K/q5_K to q4_0, q6_K to q8_0, then f16)") { model, type, output };
        command.SetAction(parse =>
        {
            var target = parse.GetValue(type);
            if (!FileTypes.Contains(target))
            {
                Console.Error.WriteLine($"--type {target} is not a file type; choose one of {string.Join(", ", FileTypes)}");
                return 2;
            }
            string path = parse.GetValue(output)!;
            var watch = Stopwatch.StartNew();
            using var checkpoint = CheckpointLoader.Load(parse.GetValue(model)!);
            CheckpointExporter.WriteGguf(checkpoint, path, target);
            Console.WriteLine($"wrote {path}: {target} matrices, {new FileInfo(path).Length / 1e6:F1} MB, {watch.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
