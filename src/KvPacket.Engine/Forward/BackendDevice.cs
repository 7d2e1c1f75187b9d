using KvPacket.Compute.Cuda;
using KvPacket.Compute.Ilgpu;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Cuda;
using KvPacket.Engine.Ilgpu;

namespace KvPacket.Engine.Forward;

/// <summary>Where a model runs: the CPU, a CUDA GPU, the ILGPU backend, or a GPU when the driver and a device are present.</summary>
public enum BackendDevice
{
    /// <summary>The SIMD <see cref="Transformer"/>.</summary>
    Cpu,
    /// <summary>The <see cref="CudaTransformer"/> on GPU 0 (an error where there is none).</summary>
    Cuda,
    /// <summary>CUDA when a device is usable, else the CPU.</summary>
    Auto,
    /// <summary>
    /// The <see cref="IlgpuTransformer"/> (the kernels written once in C#) on ILGPU's first CUDA device, else on ILGPU's
    /// CPU accelerator; f32 weights and KV.
    /// </summary>
    Ilgpu,
}

/// <summary>Opens a model on a <see cref="BackendDevice"/> with one set of sizes, so every host (CLI, daemon, engine) chooses the same way.</summary>
public static class Backends
{
    /// <summary>Parses <c>cpu</c>, <c>cuda</c>, <c>ilgpu</c> or <c>auto</c>.</summary>
    /// <exception cref="ArgumentException">Any other name.</exception>
    public static BackendDevice Parse(string name) => name.ToLowerInvariant() switch
    {
        "cpu" => BackendDevice.Cpu,
        "cuda" => BackendDevice.Cuda,
        "ilgpu" => BackendDevice.Ilgpu,
        "auto" => BackendDevice.Auto,
        _ => throw new ArgumentException($"unknown device '{name}': cpu, cuda, ilgpu or auto."),
    };

    /// <summary>The device <paramref name="device"/> comes to here: <see cref="BackendDevice.Auto"/> is CUDA where a GPU is usable, else the CPU.</summary>
    public static BackendDevice Resolve(BackendDevice device) =>
        device != BackendDevice.Auto ? device : CudaDevice.IsAvailable(out _) ? BackendDevice.Cuda : BackendDevice.Cpu;

    /// <summary>
    /// <paramref name="checkpoint"/> on <paramref name="device"/>, sized by <paramref name="sizes"/> (KV cache tokens and
    /// type, step tokens and sequences; threads on the CPU). On the GPU matrices are <paramref name="gpuWeights"/> (BF16 or
    /// F32; block-quantised ones stay as stored) and the KV cache F16 unless <paramref name="sizes"/> asks for F32; the backend owns the GPU it opened.
    /// <paramref name="description"/> says what was opened, for logs.
    /// </summary>
    /// <exception cref="NotSupportedException"><see cref="BackendDevice.Cuda"/> where no GPU is usable (the reason is named).</exception>
    public static IForwardBackend Open(Checkpoint checkpoint, BackendDevice device, TransformerOptions sizes, out string description, DType gpuWeights = DType.BF16)
    {
        string reason = "";
        if (device == BackendDevice.Cpu || (device == BackendDevice.Auto && !CudaDevice.IsAvailable(out reason)))
        {
            var cpu = new Transformer(checkpoint, sizes);
            description = $"CPU, {cpu.ThreadCount} threads, {sizes.KvType} KV" + (device == BackendDevice.Auto ? $" (no GPU: {reason})" : "");
            return cpu;
        }
        string opened = "";
        if (device == BackendDevice.Ilgpu)
        {
            var backend = Owning(IlgpuDevice.Open(preferCuda: true), ilgpu =>
            {
                opened = $"{ilgpu.Name}, F32 weights, F32 KV";
                return new IlgpuTransformer(checkpoint, ilgpu.Accelerator, maxTokens: sizes.MaxBatchTokens, kvTokens: sizes.KvCacheTokens,
                    maxSequences: sizes.MaxBatchSequences) { OwnedDevice = ilgpu };
            });
            description = opened;
            return backend;
        }
        if (!CudaDevice.IsAvailable(out reason)) throw new NotSupportedException($"--device cuda: no GPU here ({reason})");
        var cuda = Owning(CudaDevice.Open(), gpu =>
        {
            var kv = sizes.KvType == DType.F32 ? DType.F32 : DType.F16;
            var transformer = new CudaTransformer(checkpoint, gpu, gpuWeights, kv, maxTokens: sizes.MaxBatchTokens, kvTokens: sizes.KvCacheTokens,
                maxSequences: sizes.MaxBatchSequences) { OwnsDevice = true };
            opened = $"{gpu.Name}, {(transformer.KeepsQuantisedWeights ? $"block-quantised weights as stored ({gpuWeights} operands)" : $"{gpuWeights} weights")}, {kv} KV";
            return transformer;
        });
        description = opened;
        return cuda;
    }

    /// <summary>The backend <paramref name="open"/> makes on <paramref name="device"/>, which it owns; the device closed if that fails.</summary>
    private static IForwardBackend Owning<TDevice>(TDevice device, Func<TDevice, IForwardBackend> open) where TDevice : IDisposable
    {
        try { return open(device); }
        catch
        {
            device.Dispose();
            throw;
        }
    }
}
