using System.CommandLine;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket synth</c>: write a seeded random-weight checkpoint at a real model shape.</summary>
internal static class SynthCommand
{
    public static Command Create()
    {
        var shape = new Option<string>("--shape") { Description = $"Model card: {string.Join(", ", ModelCard.All.Select(c => c.Name))}", Required = true };
        var dtype = new Option<DType>("--dtype") { Description = "Weight type (F32, F16, BF16)", DefaultValueFactory = _ => DType.BF16 };
        var output = new Option<string>("--out", "-o") { Description = "Directory to write config.json and model.safetensors into", Required = true };
        var seed = new Option<ulong>("--seed") { Description = "Weight seed", DefaultValueFactory = _ => 1UL };
        var command = new Command("synth", "Write a Hugging Face checkpoint of seeded random weights (for benchmarks)") { shape, dtype, output, seed };
        command.SetAction(parse =>
        {
            var card = ModelCard.Find(parse.GetValue(shape)!);
            string directory = parse.GetValue(output)!;
            SyntheticCheckpoint.Write(card.Config, parse.GetValue(dtype), directory, parse.GetValue(seed));
            Console.WriteLine($"wrote {card.Name} ({parse.GetValue(dtype)}, random weights, seed {parse.GetValue(seed)}) to {directory}");
            return 0;
        });
        return command;
    }
}
