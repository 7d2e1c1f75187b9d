namespace KvPacket.Compute.Cuda;

/// <summary>A CUDA driver, NVRTC or cuBLAS call failed; the message names the call and the status it returned.</summary>
public sealed class CudaException(string call, string status, string? detail = null)
    : Exception($"{call} failed: {status}{(detail is null ? "" : Environment.NewLine + detail)}")
{
    /// <summary>The API call that failed.</summary>
    public string Call { get; } = call;

    /// <summary>The status name it returned.</summary>
    public string Status { get; } = status;
}
