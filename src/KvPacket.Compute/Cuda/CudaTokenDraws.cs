using System.Reflection;
using System.Runtime.CompilerServices;
using KvPacket.Compute.Sampling;

namespace KvPacket.Compute.Cuda;

/// <summary>
/// Chooses tokens from logits that are on the GPU by <see cref="TokenDraw"/>'s rule (<c>token_draw.cu</c>): a cluster of
/// eight blocks per row (sm_90), the rules passed with the launch, only the ids copied back.
/// </summary>
public sealed unsafe class CudaTokenDraws : IDisposable
{
    /// <summary>The first architecture with thread-block clusters (sm_90), which the kernel needs.</summary>
    public const int MinimumArchitecture = 90;

    /// <summary>Rows one launch takes (token_draw.cu's DRAW_ROWS).</summary>
    public const int RowsPerLaunch = 64;
    private const uint Threads = 512;   // token_draw.cu's DRAW_THREADS
    private const uint Cluster = 8;     // token_draw.cu's DRAW_CLUSTER: blocks per row

    private readonly CudaDevice _device;
    private readonly CudaModule _module;
    private readonly nint _kernel;
    private readonly DeviceBuffer _result;

    [InlineArray(RowsPerLaunch)]
    private struct DrawBatch { private TokenDraw _first; }

    /// <summary>Compiles the kernel on <paramref name="device"/> for up to <paramref name="maxRows"/> rows a call.</summary>
    public CudaTokenDraws(CudaDevice device, int maxRows)
    {
        if (device.Architecture < MinimumArchitecture)
            throw new NotSupportedException($"Token draws on the device need thread-block clusters (sm_{MinimumArchitecture}); {device.Name} is sm_{device.Architecture}.");
        _device = device;
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("cuda/token_draw.cu")!;
        _module = device.LoadModule(new StreamReader(stream).ReadToEnd(), "token_draw");
        _kernel = _module.Function("token_draw");
        _result = device.Allocate(4L * Math.Max(1, maxRows));
    }

    /// <summary>Frees the result buffer (the module goes with the device).</summary>
    public void Dispose() => _result.Dispose();

    /// <summary>
    /// <paramref name="next"/>[r] = the token <paramref name="draws"/>[r] chooses from row r of <paramref name="logits"/>
    /// ([rows, <paramref name="vocab"/>] floats on the device, rows = <paramref name="draws"/>' length); waits for the ids.
    /// </summary>
    public void Choose(DeviceBuffer logits, int vocab, ReadOnlySpan<TokenDraw> draws, Span<int> next)
    {
        if ((long)draws.Length * 4 > _result.Bytes) throw new ArgumentOutOfRangeException(nameof(draws), $"{draws.Length} rows, more than the {_result.Bytes / 4} this was made for.");
        if ((long)draws.Length * vocab * 4 > logits.Bytes) throw new ArgumentOutOfRangeException(nameof(draws), $"{draws.Length} rows of {vocab} logits are more than the buffer holds.");
        DrawBatch batch = default;
        for (int first = 0; first < draws.Length; first += RowsPerLaunch)
        {
            int rows = Math.Min(RowsPerLaunch, draws.Length - first);
            for (int r = 0; r < rows; r++)
            {
                var draw = draws[first + r];
                // The argmax is top-k 1 at any temperature: the kernel has one rule.
                batch[r] = draw.IsGreedy ? new TokenDraw(1, 1, 1, 0) : draw;
            }
            ulong rowsPointer = logits.At((long)first * vocab * 4), resultPointer = _result.At(first * 4L);
            _module.Launch(_kernel, ((uint)rows * Cluster, 1), Threads, (nint)(&rowsPointer), (nint)(&vocab), (nint)(&batch), (nint)(&resultPointer));
        }
        _device.Download(_result, next[..draws.Length]);
    }
}
