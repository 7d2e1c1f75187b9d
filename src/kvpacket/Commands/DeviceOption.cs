using System.CommandLine;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Forward;

namespace KvPacket.Cli.Commands;

/// <summary><c>--device cpu|cuda</c>: which backend a command runs the model on.</summary>
internal static class DeviceOption
{
    public static Option<string> Create()
    {
        var option = new Option<string>("--device") { Description = "cpu (f32 KV), or cuda (bf16 weights, f16 KV)", DefaultValueFactory = _ => "cpu" };
        option.AcceptOnlyFromAmong("cpu", "cuda");
        return option;
    }

    /// <summary><paramref name="checkpoint"/> on <paramref name="device"/>, with a KV cache of <paramref name="kvTokens"/> tokens.</summary>
    public static OpenedBackend Open(Checkpoint checkpoint, string device, int kvTokens)
    {
        if (device != "cuda")
            return new OpenedBackend(new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, MaxBatchTokens = 512, KvCacheTokens = kvTokens }), null,
                $"CPU, {Environment.ProcessorCount} threads, f32 KV");
        if (!CudaDevice.IsAvailable(out string reason)) throw new NotSupportedException($"--device cuda: no GPU here ({reason})");
        var gpu = CudaDevice.Open();
        try { return new OpenedBackend(new CudaTransformer(checkpoint, gpu, DType.BF16, DType.F16, maxTokens: 512, kvTokens: kvTokens), gpu, $"{gpu.Name}, bf16 weights, f16 KV"); }
        catch
        {
            gpu.Dispose();
            throw;
        }
    }
}

/// <summary>A backend and the GPU it runs on (if any), disposed in that order.</summary>
internal sealed class OpenedBackend(IForwardBackend backend, CudaDevice? device, string description) : IDisposable
{
    public IForwardBackend Backend => backend;

    /// <summary>The device and KV type, for printing.</summary>
    public string Description => description;

    public void Dispose()
    {
        backend.Dispose();
        device?.Dispose();
    }
}
