using System.CommandLine;
using KvPacket.Cli.Commands;

var root = new RootCommand("kvpacket: serve Llama-family models with reusable, precomputed KV packets.")
{
    GenerateCommand.Create(),
    DemoCommand.Create(),
    SynthCommand.Create(),
    BenchCommand.Create(),
    InspectCommand.Create(),
    TokenizeCommand.Create(),
    EvalCommand.Create(),
    StoreCommand.Create(),
    CudaCommand.Create(),
};
return root.Parse(args).Invoke();
