using System.Runtime.InteropServices;

namespace KvPacket.Compute.Cuda;

/// <summary>The NVRTC calls that compile CUDA C to a cubin for one architecture.</summary>
internal static unsafe partial class Nvrtc
{
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcVersion(out int major, out int minor);
    [LibraryImport(CudaLibraries.Nvrtc, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int nvrtcCreateProgram(out nint program, string source, string name, int headers, byte** headerSources, byte** includeNames);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcCompileProgram(nint program, int optionCount, byte** options);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcGetProgramLogSize(nint program, out nuint size);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcGetCUBINSize(nint program, out nuint size);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial int nvrtcDestroyProgram(ref nint program);
    [LibraryImport(CudaLibraries.Nvrtc)] private static partial byte* nvrtcGetErrorString(int status);

    /// <summary>NVRTC's version, "major.minor".</summary>
    public static string Version()
    {
        Check(nvrtcVersion(out int major, out int minor), "nvrtcVersion");
        return $"{major}.{minor}";
    }

    /// <summary>Compiles <paramref name="source"/> for sm_<paramref name="architecture"/>; a failure carries the compiler log.</summary>
    public static byte[] CompileToCubin(string source, string name, int architecture, IReadOnlyList<string> extraOptions)
    {
        Check(nvrtcCreateProgram(out nint program, source, name, 0, null, null), "nvrtcCreateProgram");
        try
        {
            string[] options = [$"--gpu-architecture=sm_{architecture}", "--std=c++17", "-default-device", .. extraOptions];
            var handles = options.Select(o => Marshal.StringToCoTaskMemUTF8(o)).ToArray();
            try
            {
                fixed (nint* pointers = handles)
                {
                    int status = nvrtcCompileProgram(program, options.Length, (byte**)pointers);
                    if (status != 0) throw new CudaException("nvrtcCompileProgram", ErrorString(status), Log(program));
                }
            }
            finally { foreach (var handle in handles) Marshal.FreeCoTaskMem(handle); }
            Check(nvrtcGetCUBINSize(program, out nuint size), "nvrtcGetCUBINSize");
            var cubin = new byte[size];
            fixed (byte* destination = cubin) Check(nvrtcGetCUBIN(program, destination), "nvrtcGetCUBIN");
            return cubin;
        }
        finally { nvrtcDestroyProgram(ref program); }
    }

    private static string Log(nint program)
    {
        if (nvrtcGetProgramLogSize(program, out nuint size) != 0 || size <= 1) return "";
        var log = new byte[size];
        fixed (byte* destination = log) nvrtcGetProgramLog(program, destination);
        return System.Text.Encoding.UTF8.GetString(log, 0, (int)size - 1);
    }

    private static string ErrorString(int status) => Marshal.PtrToStringUTF8((nint)nvrtcGetErrorString(status)) ?? $"nvrtcResult {status}";

    private static void Check(int status, string call)
    {
        if (status != 0) throw new CudaException(call, ErrorString(status));
    }
}
