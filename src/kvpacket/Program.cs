using System.CommandLine;
using KvPacket.Cli;
using KvPacket.Cli.Commands;

// The daemon and its clients use Unix sockets and file modes: this is a Linux program.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

var root = new RootCommand("kvpacket: serve Llama-family models with reusable, precomputed KV packets.")
{
    GenerateCommand.Create(),
    DemoCommand.Create(),
    SynthCommand.Create(),
    QuantizeCommand.Create(),
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
    IlgpuCommand.Create(),
    PlotCommand.Create(),
};
foreach (var command in ServeCommands.Create()) root.Subcommands.Add(command);
var verbose = new Option<bool>("--verbose") { Description = "Print the stack trace of every error", Recursive = true };
root.Options.Add(verbose);
var parsed = root.Parse(args);
try
{
    return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (Exception e) when (!parsed.GetValue(verbose) && ExpectedError.Is(e))
{
    // A bad file or argument is the user's to fix: one line naming what is wrong. Anything else is a bug and keeps its trace.
    Console.Error.WriteLine($"kvpacket: {e.Message}");
    return 2;
}

