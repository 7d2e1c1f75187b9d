using System.CommandLine;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Cli.Commands;

/// <summary><c>--device cpu|cuda|ilgpu|auto</c>: which backend a command runs the model on.</summary>
internal static class DeviceOption
{
    public static Option<string> Create(string fallback = "cpu")
    {
        var option = new Option<string>("--device") { Description = "cpu (f32 KV), cuda (bf16 weights, f16 KV), ilgpu (the ILGPU backend, f32), or auto (cuda when a GPU is usable)", DefaultValueFactory = _ => fallback };
        option.AcceptOnlyFromAmong("cpu", "cuda", "ilgpu", "auto");
        return option;
    }

    /// <summary>
    /// <paramref name="checkpoint"/> on <paramref name="device"/>, with a KV cache of <paramref name="kvTokens"/> tokens
    /// (f32 on the CPU, where the evaluations' figures were taken; f16 on the GPU).
    /// </summary>
    public static IForwardBackend Open(Checkpoint checkpoint, string device, int kvTokens, out string description) =>
        Backends.Open(checkpoint, Backends.Parse(device), new TransformerOptions { KvType = DType.F32, MaxBatchTokens = 512, KvCacheTokens = kvTokens }, out description);
}
