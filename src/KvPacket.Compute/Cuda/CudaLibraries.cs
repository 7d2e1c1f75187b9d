using System.Reflection;
using System.Runtime.InteropServices;

namespace KvPacket.Compute.Cuda;

/// <summary>
/// Finds the CUDA libraries at run time under their versioned names (libnvrtc.so.13, libcublas.so.12, …) in the
/// usual places, so a machine with only the driver and the CUDA runtime libraries (no SDK symlinks) works.
/// </summary>
internal static class CudaLibraries
{
    public const string Driver = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string Cublas = "cublas";

    private static int _registered;

    /// <summary>Installs the resolver for this assembly (once).</summary>
    public static void Register()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 0) NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        string[] candidates = name switch
        {
            Driver => ["libcuda.so.1", "libcuda.so"],
            Nvrtc => Versioned("libnvrtc.so"),
            Cublas => Versioned("libcublas.so"),
            _ => [],
        };
        string[] directories = ["", "/usr/local/cuda/lib64/", "/usr/local/cuda/targets/x86_64-linux/lib/", "/usr/lib/x86_64-linux-gnu/"];
        foreach (string directory in directories)
            foreach (string candidate in candidates)
                if (NativeLibrary.TryLoad(directory + candidate, out var handle)) return handle;
        return IntPtr.Zero;
    }

    private static string[] Versioned(string stem) => [stem, stem + ".13", stem + ".12", stem + ".11"];

    /// <summary>Whether the CUDA driver library can be loaded and reports at least one device.</summary>
    public static bool DeviceAvailable(out string reason)
    {
        Register();
        try
        {
            int status = CudaDriver.cuInit(0);
            if (status != 0) { reason = $"cuInit returned {CudaDriver.ErrorName(status)}"; return false; }
            CudaDriver.cuDeviceGetCount(out int count);
            reason = count > 0 ? "" : "the CUDA driver reports no device";
            return count > 0;
        }
        catch (DllNotFoundException)
        {
            reason = "no CUDA driver (libcuda.so.1) on this machine";
            return false;
        }
    }
}
