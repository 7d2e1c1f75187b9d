using System.CommandLine;
using KvPacket.Cli.Commands;

// The daemon and its clients use Unix sockets and file modes: this is a Linux program.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

var root = new RootCommand("kvpacket: serve Llama-family models with reusable, precomputed KV packets.")
{
    GenerateCommand.Create(),
    DemoCommand.Create(),
    SynthCommand.Create(),
    BenchCommand.Create(),
    InspectCommand.Create(),
    TokenizeCommand.Create(),
    EvalCommand.Create(),
    TrainCommand.Create(),
    PretrainCommand.Create(),
    FinetuneCommand.Create(),
    CorpusCommand.Create(),
    TokenizerCommand.Create(),
    StoreCommand.Create(),
    CudaCommand.Create(),
};
foreach (var command in ServeCommands.Create()) root.Subcommands.Add(command);
return root.Parse(args).Invoke();
