using KvPacket.Compute.Cuda;
using Xunit;

namespace KvPacket.Tests;

/// <summary>A fact that runs only where a CUDA device is present, and says why it was skipped otherwise.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (!CudaDevice.IsAvailable(out string reason)) Skip = $"no CUDA device: {reason}";
    }
}
