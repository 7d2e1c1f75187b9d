using System.CommandLine;
using System.Diagnostics;
using KvPacket.Core.Checkpoints;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket quantize</c>: write any checkpoint we read as a GGUF file of a chosen weight type, as llama.cpp reads it.</summary>
internal static class QuantizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Checkpoint to read (llama2.c .bin, Hugging Face directory, GGUF)", Required = true };
        var type = new Option<string>("--type") { Description = $"Matrix type or mix: {string.Join(", ", QuantisationMix.Names)}", DefaultValueFactory = _ => "Q4_K_M" };
        var output = new Option<string>("--out", "-o") { Description = "GGUF file to write", Required = true };
        var command = new Command("quantize", "Write a checkpoint as GGUF with its matrices in one type or llama.cpp's Q4_K_M mix (rows that are not whole blocks fall back: q4_K/q5_K to q4_0, q6_K to q8_0, then f16)") { model, type, output };
        command.SetAction(parse =>
        {
            QuantisationMix mix;
            try { mix = QuantisationMix.Parse(parse.GetValue(type)!); }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"--type: {e.Message}");
                return 2;
            }
            string path = parse.GetValue(output)!;
            var watch = Stopwatch.StartNew();
            using var checkpoint = CheckpointLoader.Load(parse.GetValue(model)!);
            CheckpointExporter.WriteGguf(checkpoint, path, mix);
            Console.WriteLine($"wrote {path}: {mix.Name} matrices, {new FileInfo(path).Length / 1e6:F1} MB, {watch.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return command;
    }
}
