using System.IO.Hashing;
using System.Text;

namespace KvPacket.Compute.Cuda;

/// <summary>
/// One GPU: its primary context made current, a stream, a cuBLAS handle on that stream, and modules compiled by
/// NVRTC for the device's own sm_XX (cached on disk by source hash, architecture and driver version). Every call's
/// status is checked. Work on one device object must come from one thread at a time, but may move between threads (a
/// scheduler resuming on the thread pool): each call makes the context current on its thread first.
/// </summary>
public sealed unsafe class CudaDevice : IDisposable
{
    private readonly int _device;
    private readonly List<nint> _modules = [];
    private bool _disposed;

    private CudaDevice(int ordinal)
    {
        CudaLibraries.Register();
        CudaDriver.Check(CudaDriver.cuInit(0), "cuInit");
        CudaDriver.Check(CudaDriver.cuDeviceGet(out _device, ordinal), "cuDeviceGet");
        CudaDriver.Check(CudaDriver.cuDevicePrimaryCtxRetain(out _context, _device), "cuDevicePrimaryCtxRetain");
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out int major, CudaDriver.ComputeCapabilityMajor, _device), "cuDeviceGetAttribute");
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out int minor, CudaDriver.ComputeCapabilityMinor, _device), "cuDeviceGetAttribute");
        Architecture = major * 10 + minor;
        CudaDriver.Check(CudaDriver.cuDeviceGetAttribute(out int multiprocessors, CudaDriver.MultiprocessorCount, _device), "cuDeviceGetAttribute");
        Multiprocessors = multiprocessors;
        CudaDriver.Check(CudaDriver.cuDriverGetVersion(out int driver), "cuDriverGetVersion");
        DriverVersion = driver;
        byte* name = stackalloc byte[256];
        CudaDriver.Check(CudaDriver.cuDeviceGetName(name, 256, _device), "cuDeviceGetName");
        Name = System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)name) ?? "CUDA device";
        CudaDriver.Check(CudaDriver.cuStreamCreate(out nint stream, 0), "cuStreamCreate");
        Stream = stream;
        CuBlas.Check(CuBlas.cublasCreate(out nint blas), "cublasCreate");
        Blas = blas;
        CuBlas.Check(CuBlas.cublasSetStream(blas, stream), "cublasSetStream");
        // A workspace of our own: cuBLAS then never allocates inside a captured graph.
        _workspace = Allocate(32L << 20);
        CuBlas.Check(CuBlas.cublasSetWorkspace(blas, _workspace.Pointer, (nuint)_workspace.Bytes), "cublasSetWorkspace");
    }

    private readonly DeviceBuffer _workspace;
    private readonly nint _context;
    [ThreadStatic] private static CudaDevice? t_current;   // the device object, not the context handle: a reopened device may get the same handle

    /// <summary>Makes this device's context current on the calling thread (a thread-local check when it already is).</summary>
    public void MakeCurrent()
    {
        if (ReferenceEquals(t_current, this)) return;
        CudaDriver.Check(CudaDriver.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
        t_current = this;
    }

    /// <summary>
    /// Records what <paramref name="enqueue"/> queues on the stream as a CUDA graph, instantiated for replay with
    /// <see cref="Replay"/>: one launch instead of hundreds. Kernel arguments are captured by value.
    /// </summary>
    public CudaGraph Capture(Action enqueue)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuStreamBeginCapture(Stream, 2 /* relaxed */), "cuStreamBeginCapture");
        try { enqueue(); }
        catch
        {
            CudaDriver.cuStreamEndCapture(Stream, out nint broken);
            if (broken != 0) CudaDriver.cuGraphDestroy(broken);
            throw;
        }
        CudaDriver.Check(CudaDriver.cuStreamEndCapture(Stream, out nint graph), "cuStreamEndCapture");
        try
        {
            CudaDriver.Check(CudaDriver.cuGraphInstantiateWithFlags(out nint exec, graph, 0), "cuGraphInstantiateWithFlags");
            return new CudaGraph(exec);
        }
        finally { CudaDriver.cuGraphDestroy(graph); }
    }

    /// <summary>Queues a captured graph on the stream.</summary>
    public void Replay(CudaGraph graph)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuGraphLaunch(graph.Exec, Stream), "cuGraphLaunch");
    }

    /// <summary>Opens GPU <paramref name="ordinal"/>.</summary>
    public static CudaDevice Open(int ordinal = 0) => new(ordinal);

    /// <summary>Whether this machine has a usable CUDA device; <paramref name="reason"/> says why not.</summary>
    public static bool IsAvailable(out string reason) => CudaLibraries.DeviceAvailable(out reason);

    /// <summary>NVRTC's version, "major.minor".</summary>
    public static string NvrtcVersion
    {
        get
        {
            CudaLibraries.Register();
            return Nvrtc.Version();
        }
    }

    /// <summary>The device's name.</summary>
    public string Name { get; }

    /// <summary>Compute capability as major·10 + minor (90 for an H100).</summary>
    public int Architecture { get; }

    /// <summary>Streaming multiprocessors (132 on an H100 SXM or an H200).</summary>
    public int Multiprocessors { get; }

    /// <summary>The driver's CUDA version (13000 for 13.0).</summary>
    public int DriverVersion { get; }

    /// <summary>The stream all work is queued on.</summary>
    public nint Stream { get; }

    /// <summary>The cuBLAS handle bound to <see cref="Stream"/>.</summary>
    internal nint Blas { get; }

    /// <summary>Seconds the last <see cref="LoadModule"/> spent in NVRTC (0 when the module came from the disk cache).</summary>
    public double LastCompileSeconds { get; private set; }

    /// <summary>
    /// A module of <paramref name="source"/> compiled for this device: from the on-disk cache when the same source,
    /// architecture and driver were compiled before, else by NVRTC (and then cached).
    /// </summary>
    public CudaModule LoadModule(string source, string name)
    {
        MakeCurrent();
        string key = Convert.ToHexString(XxHash128.Hash(Encoding.UTF8.GetBytes($"{source}\n//sm_{Architecture} driver {DriverVersion}"))).ToLowerInvariant();
        string directory = Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "kvpacket", "cuda");
        string path = Path.Combine(directory, $"{name}-sm{Architecture}-{key}.cubin");
        byte[] cubin;
        LastCompileSeconds = 0;
        if (File.Exists(path)) cubin = File.ReadAllBytes(path);
        else
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            cubin = Nvrtc.CompileToCubin(source, name + ".cu", Architecture, ["-I/usr/local/cuda/include"]);
            LastCompileSeconds = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
            Directory.CreateDirectory(directory);
            File.WriteAllBytes(path + ".tmp", cubin);
            File.Move(path + ".tmp", path, overwrite: true);
        }
        nint module;
        fixed (byte* image = cubin) CudaDriver.Check(CudaDriver.cuModuleLoadData(out module, image), "cuModuleLoadData");
        _modules.Add(module);
        return new CudaModule(this, module);
    }

    /// <summary>Allocates <paramref name="bytes"/> of device memory.</summary>
    public DeviceBuffer Allocate(long bytes)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemAlloc(out ulong pointer, (nuint)Math.Max(bytes, 4)), "cuMemAlloc");
        return new DeviceBuffer(pointer, bytes);
    }

    /// <summary>
    /// Queues a copy of <paramref name="bytes"/> from page-locked host memory (<see cref="AllocateHost"/>) to the device
    /// and returns without waiting: the DMA overlaps what else is queued, and the caller synchronises before reusing the source.
    /// </summary>
    public void UploadPageLocked(nint source, DeviceBuffer destination, long offsetBytes, long bytes)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemcpyHtoDAsync(destination.Pointer + (ulong)offsetBytes, (void*)source, (nuint)bytes, Stream), "cuMemcpyHtoDAsync");
    }

    /// <summary>Page-locked host memory of <paramref name="bytes"/> (copies to and from the device run by DMA, at full link speed); free with <see cref="FreeHost"/>.</summary>
    public nint AllocateHost(long bytes)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemHostAlloc(out nint pointer, (nuint)bytes, 0), "cuMemHostAlloc");
        return pointer;
    }

    /// <summary>Frees memory from <see cref="AllocateHost"/> (nothing to do once the device is closed: it went with the context).</summary>
    public void FreeHost(nint pointer)
    {
        if (_disposed) return;
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemFreeHost(pointer), "cuMemFreeHost");
    }

    /// <summary>Copies host memory to the device (queued on the stream; the source must stay valid until it runs).</summary>
    public void Upload<T>(ReadOnlySpan<T> source, DeviceBuffer destination, long offsetBytes = 0) where T : unmanaged
    {
        MakeCurrent();
        fixed (T* pointer = source)
            CudaDriver.Check(CudaDriver.cuMemcpyHtoDAsync(destination.Pointer + (ulong)offsetBytes, pointer, (nuint)(source.Length * sizeof(T)), Stream), "cuMemcpyHtoDAsync");
        Synchronize(); // spans may be stack or pooled memory: finish before returning
    }

    /// <summary>Copies device memory to the host and waits for it.</summary>
    public void Download<T>(DeviceBuffer source, Span<T> destination, long offsetBytes = 0) where T : unmanaged
    {
        MakeCurrent();
        fixed (T* pointer = destination)
            CudaDriver.Check(CudaDriver.cuMemcpyDtoHAsync(pointer, source.Pointer + (ulong)offsetBytes, (nuint)(destination.Length * sizeof(T)), Stream), "cuMemcpyDtoHAsync");
        Synchronize();
    }

    /// <summary>Fills <paramref name="buffer"/> with the 32-bit pattern <paramref name="value"/> (to poison outputs before a check).</summary>
    public void Fill(DeviceBuffer buffer, uint value)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemsetD32Async(buffer.Pointer, value, (nuint)(buffer.Bytes / 4), Stream), "cuMemsetD32Async");
    }

    /// <summary>Waits for everything queued on the stream.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuStreamSynchronize(Stream), "cuStreamSynchronize");
    }

    /// <summary>Runs <paramref name="work"/> <paramref name="repeats"/> times between CUDA events and returns each run's milliseconds.</summary>
    public double[] Time(Action work, int repeats)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuEventCreate(out nint start, 0), "cuEventCreate");
        CudaDriver.Check(CudaDriver.cuEventCreate(out nint end, 0), "cuEventCreate");
        try
        {
            var times = new double[repeats];
            for (int r = 0; r < repeats; r++)
            {
                CudaDriver.Check(CudaDriver.cuEventRecord(start, Stream), "cuEventRecord");
                work();
                CudaDriver.Check(CudaDriver.cuEventRecord(end, Stream), "cuEventRecord");
                CudaDriver.Check(CudaDriver.cuEventSynchronize(end), "cuEventSynchronize");
                CudaDriver.Check(CudaDriver.cuEventElapsedTime(out float ms, start, end), "cuEventElapsedTime");
                times[r] = ms;
            }
            return times;
        }
        finally
        {
            CudaDriver.cuEventDestroy(start);
            CudaDriver.cuEventDestroy(end);
        }
    }

    /// <summary>
    /// output[t, rows] = input[t, columns] · weight[rows, columns]ᵀ (row-major), with weight and input both F32 or both
    /// BF16, the output F32 and the accumulation F32 (cuBLAS GemmEx; no TF32). With <paramref name="accumulate"/> the
    /// product is added to output (a residual connection in the same pass).
    /// </summary>
    public void MatMul(DeviceBuffer weight, DeviceBuffer input, Core.Memory.DType type, int rows, int columns, int tokens, DeviceBuffer output, bool accumulate = false)
    {
        MakeCurrent();
        int dataType = CuBlas.DataType(type);
        float alpha = 1, beta = accumulate ? 1 : 0;
        // Column-major view: W is [columns × rows] (so op T), x is [columns × tokens], y is [rows × tokens].
        CuBlas.Check(CuBlas.cublasGemmEx(Blas, CuBlas.OpT, CuBlas.OpN, rows, tokens, columns, &alpha, weight.Pointer, dataType, columns,
            input.Pointer, dataType, columns, &beta, output.Pointer, CuBlas.R32F, rows, CuBlas.Compute32F, CuBlas.GemmDefault), "cublasGemmEx");
    }

    /// <summary>
    /// Row-major, strided-batched C = α·op(A)·op(B) + β·C for each of <paramref name="batch"/> matrices: C [m, n],
    /// op(A) [m, k], op(B) [k, n], with A stored [m, k] (or [k, m] when <paramref name="transposeA"/>) and B [k, n]
    /// (or [n, k]). Leading dimensions and strides are in elements; accumulation is f32 (no TF32).
    /// </summary>
    public void Gemm(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
        in GemmOperand a, in GemmOperand b, float beta, in GemmOperand c, int batch = 1)
    {
        MakeCurrent();
        // Row-major C is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands, keep each one's own transposition.
        CuBlas.Check(CuBlas.cublasGemmStridedBatchedEx(Blas, transposeB ? CuBlas.OpT : CuBlas.OpN, transposeA ? CuBlas.OpT : CuBlas.OpN, n, m, k, &alpha,
            b.Pointer, CuBlas.DataType(b.Type), b.LeadingDimension, b.Stride, a.Pointer, CuBlas.DataType(a.Type), a.LeadingDimension, a.Stride, &beta,
            c.Pointer, CuBlas.DataType(c.Type), c.LeadingDimension, c.Stride, batch, CuBlas.Compute32F, CuBlas.GemmDefault), "cublasGemmStridedBatchedEx");
    }

    /// <summary>Copies <paramref name="bytes"/> device to device (for the bandwidth roofline).</summary>
    public void Copy(DeviceBuffer source, DeviceBuffer destination, long bytes) => Copy(source.Pointer, destination.Pointer, bytes);

    /// <summary>Queues a copy of <paramref name="bytes"/> from device address <paramref name="source"/> to <paramref name="destination"/>.</summary>
    public void Copy(ulong source, ulong destination, long bytes)
    {
        MakeCurrent();
        CudaDriver.Check(CudaDriver.cuMemcpyDtoDAsync(destination, source, (nuint)bytes, Stream), "cuMemcpyDtoDAsync");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        MakeCurrent();
        foreach (var module in _modules) CudaDriver.cuModuleUnload(module);
        _workspace.Dispose();
        CuBlas.cublasDestroy(Blas);
        CudaDriver.cuStreamDestroy(Stream);
        CudaDriver.cuDevicePrimaryCtxRelease(_device);
        t_current = null;
    }
}

/// <summary>A row-major matrix operand of <see cref="CudaDevice.Gemm"/>: its address, element type, leading dimension (elements between rows) and batch stride.</summary>
public readonly record struct GemmOperand(ulong Pointer, Core.Memory.DType Type, int LeadingDimension, long Stride = 0);

/// <summary>An instantiated CUDA graph; dispose to free it.</summary>
public sealed class CudaGraph(nint exec) : IDisposable
{
    internal nint Exec { get; private set; } = exec;

    /// <inheritdoc />
    public void Dispose()
    {
        if (Exec != 0) CudaDriver.cuGraphExecDestroy(Exec);
        Exec = 0;
    }
}

/// <summary>A device allocation; dispose to free it.</summary>
public sealed class DeviceBuffer(ulong pointer, long bytes) : IDisposable
{
    /// <summary>The device address.</summary>
    public ulong Pointer { get; private set; } = pointer;

    /// <summary>Its size in bytes.</summary>
    public long Bytes { get; } = bytes;

    /// <summary>The address <paramref name="offsetBytes"/> in.</summary>
    public ulong At(long offsetBytes) => Pointer + (ulong)offsetBytes;

    /// <inheritdoc />
    public void Dispose()
    {
        if (Pointer != 0) CudaDriver.cuMemFree(Pointer);
        Pointer = 0;
    }
}
