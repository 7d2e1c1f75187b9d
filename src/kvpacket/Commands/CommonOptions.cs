using System.CommandLine;
using KvPacket.Core.Memory;

namespace KvPacket.Cli.Commands;

/// <summary>Options shared by several commands, defined once.</summary>
internal static class CommonOptions
{
    public static Option<string> Model() => new("--model", "-m") { Description = "Checkpoint: a Hugging Face directory, a .gguf file or a llama2.c .bin", Required = true };

    public static Option<DType> KvType() => new("--kv-type") { Description = "KV cache element type (F16 or F32)", DefaultValueFactory = _ => DType.F16 };

    public static Option<string> Store() => new("--store") { Description = "Packet store directory", Required = true };

    public static Option<int> Threads() => new("--threads") { Description = "Kernel threads (0: one per processor)", DefaultValueFactory = _ => 0 };
}
