using System.Runtime.InteropServices;

namespace KvPacket.Compute.Cuda;

/// <summary>The cuBLAS calls for the projections: row-major y[t, out] = x[t, in] · W[out, in]ᵀ.</summary>
internal static unsafe partial class CuBlas
{
    public const int OpN = 0, OpT = 1;
    public const int R32F = 0, R16F = 2, R16BF = 14;
    public const int Compute32F = 68;
    public const int GemmDefault = -1;

    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(out nint handle);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(nint handle);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(nint handle, nint stream);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasSetWorkspace_v2")] public static partial int cublasSetWorkspace(nint handle, ulong workspace, nuint bytes);
    [LibraryImport(CudaLibraries.Cublas)]
    public static partial int cublasGemmEx(nint handle, int transA, int transB, int m, int n, int k, float* alpha, ulong a, int aType, int lda,
        ulong b, int bType, int ldb, float* beta, ulong c, int cType, int ldc, int computeType, int algorithm);

    [LibraryImport(CudaLibraries.Cublas)]
    public static partial int cublasGemmStridedBatchedEx(nint handle, int transA, int transB, int m, int n, int k, float* alpha,
        ulong a, int aType, int lda, long strideA, ulong b, int bType, int ldb, long strideB, float* beta,
        ulong c, int cType, int ldc, long strideC, int batchCount, int computeType, int algorithm);

    /// <summary>cudaDataType of an element type cuBLAS takes as an operand or output.</summary>
    public static int DataType(Core.Memory.DType type) => type switch
    {
        Core.Memory.DType.F32 => R32F,
        Core.Memory.DType.BF16 => R16BF,
        Core.Memory.DType.F16 => R16F,
        _ => throw new ArgumentException($"cuBLAS operands must be F32, BF16 or F16, not {type}.", nameof(type)),
    };

    /// <summary>Throws <see cref="CudaException"/> naming <paramref name="call"/> unless <paramref name="status"/> is CUBLAS_STATUS_SUCCESS.</summary>
    public static void Check(int status, string call)
    {
        if (status != 0) throw new CudaException(call, $"cublasStatus_t {status}");
    }
}
