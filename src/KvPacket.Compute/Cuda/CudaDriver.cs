using System.Runtime.InteropServices;

namespace KvPacket.Compute.Cuda;

/// <summary>The CUDA driver API calls the backend uses (CUresult is an int; 0 is success).</summary>
internal static unsafe partial class CudaDriver
{
    public const int ComputeCapabilityMajor = 75, ComputeCapabilityMinor = 76, MultiprocessorCount = 16;

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDriverGetVersion(out int version);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuCtxSetCurrent(nint context);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuCtxSynchronize();
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleLoadData(out nint module, byte* image);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleUnload(nint module);
    [LibraryImport(CudaLibraries.Driver, StringMarshalling = StringMarshalling.Utf8)] public static partial int cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(out ulong pointer, nuint bytes);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong pointer);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemHostAlloc")] public static partial int cuMemHostAlloc(out nint pointer, nuint bytes, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemFreeHost(nint pointer);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial int cuMemcpyHtoDAsync(ulong destination, void* source, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial int cuMemcpyDtoHAsync(void* destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoDAsync_v2")] public static partial int cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemsetD32Async")] public static partial int cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuLaunchKernelEx(LaunchConfig* config, nint function, void** parameters, void** extra);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamSynchronize(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventCreate(out nint e, uint flags);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(nint e);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventRecord(nint e, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventSynchronize(nint e);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventElapsedTime(out float milliseconds, nint start, nint end);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGetErrorName(int status, out byte* name);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamBeginCapture(nint stream, int mode);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamEndCapture(nint stream, out nint graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphInstantiateWithFlags(out nint exec, nint graph, ulong flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphDestroy(nint graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphExecDestroy(nint exec);

    /// <summary>CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start before the previous one ends (it waits in code).</summary>
    public const int ProgrammaticStreamSerialization = 6;

    /// <summary>CUlaunchConfig.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public nint Stream;
        public LaunchAttribute* Attributes;
        public uint AttributeCount;
    }

    /// <summary>CUlaunchAttribute: an id, then a 64-byte value union (only its first int is used here).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 72)]
    public struct LaunchAttribute
    {
        [FieldOffset(0)] public int Id;
        [FieldOffset(8)] public int Value;
    }

    /// <summary>CUDA_ERROR_… name of a status.</summary>
    public static string ErrorName(int status) =>
        cuGetErrorName(status, out byte* name) == 0 && name != null ? Marshal.PtrToStringUTF8((nint)name) ?? status.ToString() : $"CUresult {status}";

    /// <summary>Throws <see cref="CudaException"/> naming <paramref name="call"/> unless <paramref name="status"/> is success.</summary>
    public static void Check(int status, string call)
    {
        if (status != 0) throw new CudaException(call, ErrorName(status));
    }
}
