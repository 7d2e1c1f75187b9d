using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// y[t, o] = Σ_k x[t, k] · W[o, k] for f32 activations and f32/f16/bf16 weights, on all cores.
/// One token is a GEMV that streams W once (memory-bound). Several tokens are a GEMM: each thread widens a panel
/// of W rows to f32 once into its own scratch, then runs a register-tiled 4-row × 3-token micro-kernel over all tokens.
/// An instance owns per-thread scratch, so calls allocate nothing; one call at a time per instance.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class MatMul : IParallelWork, IDisposable
{
    private const int PanelRowAlign = 4;
    private const int PanelBytesTarget = 192 * 1024;
    private const long ParallelThreshold = 1 << 15;
    private const int TokenBlockBytes = 160 * 1024;

    private readonly WorkerPool _pool;
    private readonly NativeBuffer<float>[] _scratch;
    private readonly int _scratchFloats;

    private float* _x, _y;
    private WeightTensor _w;
    private int _tokens, _panelRows;

    /// <summary>Creates a kernel for weights with at most <paramref name="maxColumns"/> columns.</summary>
    public MatMul(WorkerPool pool, int maxColumns)
    {
        _pool = pool;
        _scratchFloats = Math.Max(PanelRowAlign * maxColumns, PanelBytesTarget / 4 + maxColumns);
        _scratch = new NativeBuffer<float>[pool.ThreadCount];
        for (int i = 0; i < _scratch.Length; i++) _scratch[i] = new NativeBuffer<float>(_scratchFloats);
    }

    /// <summary>
    /// Multiplies <paramref name="tokens"/> rows of <paramref name="x"/> (row stride W.Columns) by Wᵀ into
    /// <paramref name="y"/> (row stride W.Rows).
    /// </summary>
    public void Multiply(float* x, int tokens, in WeightTensor w, float* y)
    {
        if (w.Type is not (DType.F32 or DType.F16 or DType.BF16)) throw new NotSupportedException($"MatMul over {w.Type} ('{w.Name}').");
        if (PanelRowAlign * w.Columns > _scratchFloats) throw new ArgumentException($"'{w.Name}' has {w.Columns} columns, more than this kernel was sized for.");
        _x = x;
        _y = y;
        _w = w;
        _tokens = tokens;
        // Panels small enough for L2, and at least four per thread so small matrices (k/v projections) still spread evenly.
        int byCache = Math.Max(PanelRowAlign, PanelBytesTarget / 4 / w.Columns / PanelRowAlign * PanelRowAlign);
        int byBalance = Math.Max(PanelRowAlign, (w.Rows / (4 * _pool.ThreadCount) + PanelRowAlign - 1) / PanelRowAlign * PanelRowAlign);
        _panelRows = tokens == 1 ? 16 : Math.Min(byCache, byBalance);
        int panels = (w.Rows + _panelRows - 1) / _panelRows;
        if ((long)tokens * w.Rows * w.Columns < ParallelThreshold) Execute(0, panels, 0);
        else _pool.Run(this, panels);
    }

    /// <inheritdoc />
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end, int worker)
    {
        int rowStart = start * _panelRows, rowEnd = Math.Min(_w.Rows, end * _panelRows);
        if (_tokens == 1) Gemv(rowStart, rowEnd, _scratch[worker].Pointer);
        else
        {
            for (int r = rowStart; r < rowEnd; r += _panelRows)
                GemmPanel(r, Math.Min(rowEnd, r + _panelRows), _scratch[worker].Pointer);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Gemv(int rowStart, int rowEnd, float* scratch)
    {
        int k = _w.Columns, r = rowStart;
        float* x = _x;
        switch (_w.Type)
        {
            case DType.F32:
                for (; r <= rowEnd - 4; r += 4) Dot.F32x4(x, (float*)_w.Data + (long)r * k, k, _y + r);
                for (; r < rowEnd; r++) _y[r] = Dot.F32(x, (float*)_w.Data + (long)r * k, k);
                break;
            case DType.BF16:
                for (; r <= rowEnd - 4; r += 4) Dot.BF16x4(x, (ushort*)_w.Data + (long)r * k, k, _y + r);
                for (; r < rowEnd; r++) _y[r] = Dot.BF16(x, (ushort*)_w.Data + (long)r * k, k);
                break;
            default:
                for (; r < rowEnd; r++)
                {
                    _w.ReadRow(r, new Span<float>(scratch, k));
                    _y[r] = Dot.F32(x, scratch, k);
                }
                break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void GemmPanel(int rowStart, int rowEnd, float* panel)
    {
        int k = _w.Columns, rows = rowEnd - rowStart;
        float* w;
        if (_w.Type == DType.F32) w = (float*)_w.Data + (long)rowStart * k;
        else
        {
            _w.ReadRows(rowStart, rows, new Span<float>(panel, rows * k));
            w = panel;
        }

        if (!Vector512.IsHardwareAccelerated || k % 16 != 0)
        {
            for (int r = 0; r < rows; r++)
                for (int t = 0; t < _tokens; t++) _y[(long)t * _w.Rows + rowStart + r] = Dot.F32(_x + (long)t * k, w + (long)r * k, k);
            return;
        }

        // Tokens in blocks small enough to stay in L2 while every 4-row group of the panel (in L1) passes over them.
        int tokenBlock = Math.Max(4, TokenBlockBytes / 4 / k / 4 * 4);
        int fullRows = rows / 4 * 4;
        for (int t0 = 0; t0 < _tokens; t0 += tokenBlock)
        {
            int t1 = Math.Min(_tokens, t0 + tokenBlock);
            for (int r = 0; r < fullRows; r += 4)
            {
                int t = t0;
                for (; t <= t1 - 4; t += 4) Tile4x4(w + (long)r * k, k, t, rowStart + r);
                for (; t < t1; t++) Dot.F32x4(_x + (long)t * k, w + (long)r * k, k, _y + (long)t * _w.Rows + rowStart + r);
            }
            for (int r = fullRows; r < rows; r++)
                for (int t = t0; t < t1; t++) _y[(long)t * _w.Rows + rowStart + r] = Dot.F32(_x + (long)t * k, w + (long)r * k, k);
        }
    }

    /// <summary>Four weight rows against four tokens: 16 accumulators, 8 loads per 16 FMAs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Tile4x4(float* w, int k, int t, int row)
    {
        float* x0 = _x + (long)t * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
        float* w0 = w, w1 = w + k, w2 = w1 + k, w3 = w2 + k;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
        for (int i = 0; i < k; i += 16)
        {
            var v0 = Vector512.Load(x0 + i);
            var v1 = Vector512.Load(x1 + i);
            var v2 = Vector512.Load(x2 + i);
            var v3 = Vector512.Load(x3 + i);
            var b = Vector512.Load(w0 + i);
            a00 = Vector512.FusedMultiplyAdd(v0, b, a00); a01 = Vector512.FusedMultiplyAdd(v1, b, a01);
            a02 = Vector512.FusedMultiplyAdd(v2, b, a02); a03 = Vector512.FusedMultiplyAdd(v3, b, a03);
            b = Vector512.Load(w1 + i);
            a10 = Vector512.FusedMultiplyAdd(v0, b, a10); a11 = Vector512.FusedMultiplyAdd(v1, b, a11);
            a12 = Vector512.FusedMultiplyAdd(v2, b, a12); a13 = Vector512.FusedMultiplyAdd(v3, b, a13);
            b = Vector512.Load(w2 + i);
            a20 = Vector512.FusedMultiplyAdd(v0, b, a20); a21 = Vector512.FusedMultiplyAdd(v1, b, a21);
            a22 = Vector512.FusedMultiplyAdd(v2, b, a22); a23 = Vector512.FusedMultiplyAdd(v3, b, a23);
            b = Vector512.Load(w3 + i);
            a30 = Vector512.FusedMultiplyAdd(v0, b, a30); a31 = Vector512.FusedMultiplyAdd(v1, b, a31);
            a32 = Vector512.FusedMultiplyAdd(v2, b, a32); a33 = Vector512.FusedMultiplyAdd(v3, b, a33);
        }
        int n = _w.Rows;
        float* y0 = _y + (long)t * n + row, y1 = y0 + n, y2 = y1 + n, y3 = y2 + n;
        y0[0] = Vector512.Sum(a00); y1[0] = Vector512.Sum(a01); y2[0] = Vector512.Sum(a02); y3[0] = Vector512.Sum(a03);
        y0[1] = Vector512.Sum(a10); y1[1] = Vector512.Sum(a11); y2[1] = Vector512.Sum(a12); y3[1] = Vector512.Sum(a13);
        y0[2] = Vector512.Sum(a20); y1[2] = Vector512.Sum(a21); y2[2] = Vector512.Sum(a22); y3[2] = Vector512.Sum(a23);
        y0[3] = Vector512.Sum(a30); y1[3] = Vector512.Sum(a31); y2[3] = Vector512.Sum(a32); y3[3] = Vector512.Sum(a33);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var buffer in _scratch) buffer.Dispose();
    }
}
