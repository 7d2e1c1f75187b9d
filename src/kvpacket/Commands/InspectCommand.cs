using System.CommandLine;
using KvPacket.Core.Checkpoints;

namespace KvPacket.Cli.Commands;

/// <summary><c>kvpacket inspect</c>: print a checkpoint's config and tensors.</summary>
internal static class InspectCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var command = new Command("inspect", "Print a checkpoint's config, parameter count and tensors") { model };
        command.SetAction(parse =>
        {
            using var checkpoint = CheckpointLoader.Load(parse.GetValue(model)!);
            Console.WriteLine(checkpoint.Config);
            Console.WriteLine($"parameters: {checkpoint.ParameterCount:N0}; bytes read per decoded token: {checkpoint.BytesReadPerToken:N0}");
            Console.WriteLine(checkpoint.TokenEmbedding);
            foreach (var tensor in checkpoint.Layers[0].Matrices) Console.WriteLine($"  layer 0: {tensor}");
            Console.WriteLine(checkpoint.Classifier);
            return 0;
        });
        return command;
    }
}
