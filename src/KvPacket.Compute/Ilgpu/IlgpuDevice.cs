using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace KvPacket.Compute.Ilgpu;

/// <summary>An ILGPU context and one accelerator of it: a CUDA GPU when asked for and present, else ILGPU's CPU accelerator.</summary>
public sealed class IlgpuDevice : IDisposable
{
    private readonly Context _context;

    private IlgpuDevice(Context context, Accelerator accelerator)
    {
        _context = context;
        Accelerator = accelerator;
    }

    /// <summary>The accelerator kernels run on.</summary>
    public Accelerator Accelerator { get; }

    /// <summary>Whether it is a CUDA GPU (else ILGPU's CPU accelerator).</summary>
    public bool IsCuda => Accelerator.AcceleratorType == AcceleratorType.Cuda;

    /// <summary>What it is, for logs.</summary>
    public string Name => $"ILGPU {Accelerator.AcceleratorType} accelerator: {Accelerator.Name}";

    /// <summary>
    /// ILGPU's first CUDA device when <paramref name="preferCuda"/> and there is one, else its CPU accelerator; profiling
    /// markers on (for <see cref="IlgpuTimeline"/>), and ILGPU.Algorithms' math (PTX has no exp instruction); kernels
    /// compiled at <paramref name="optimization"/>.
    /// </summary>
    public static IlgpuDevice Open(bool preferCuda, OptimizationLevel optimization = OptimizationLevel.O1)
    {
        var context = Context.Create(builder => (preferCuda ? builder.Cuda() : builder).CPU().Profiling().EnableAlgorithms().Optimize(optimization));
        try
        {
            var device = context.Devices.FirstOrDefault(d => preferCuda && d.AcceleratorType == AcceleratorType.Cuda)
                         ?? context.Devices.First(d => d.AcceleratorType == AcceleratorType.CPU);
            return new IlgpuDevice(context, device.CreateAccelerator(context));
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Accelerator.Dispose();
        _context.Dispose();
    }
}
