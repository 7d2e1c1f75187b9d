using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Compute.Cpu;

/// <summary>
/// y[t, o] = Σ_k x[t, k] · W[o, k] for f32 activations and f32/f16/bf16 or GGML block-format weights, on all cores. For
/// block formats (q8_0 only in its interleaved layout) the activations are first rounded to int8 blocks
/// (<see cref="QuantisedActivations"/>) and every (token, row) is one <see cref="InterleavedDot"/> or <see cref="BlockDot"/>
/// product, alone or in a batch alike; q8_0 rows kept in the file's layout are widened in registers instead.
/// One token is a GEMV that streams W once (memory-bound). Several tokens are a GEMM: each thread widens a panel
/// of W rows to f32 once into its own scratch, then runs a register-tiled 4-row × 4-token micro-kernel over blocks of
/// tokens. K is cut into chunks of <see cref="KChunk"/> so a tile's rows stay in L1 whatever the width; every path
/// (GEMV, GEMM, remainders) sums chunk by chunk in the same order, so a token's result does not depend on its batch.
/// Products of one input by two or three matrices (q/k/v, gate/up) share one pass over the workers: on the 2-core VM
/// each pass cost about 10 µs of hand-off. An instance owns per-thread scratch, so calls allocate nothing; one call at a
/// time per instance.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class MatMul : IParallelWork, IDisposable
{
    /// <summary>Columns summed per chunk.</summary>
    public const int KChunk = 1024;
    private const int PanelRowAlign = 4;
    private const int PanelBytesTarget = 512 * 1024;
    private const int TokenBlockBytes = 160 * 1024;
    private const long ParallelThreshold = 1 << 15;
    /// <summary>
    /// How far ahead (rows) a GEMV over block-format rows one at a time asks for weights. The four-row q8_0 dot asks
    /// for the next four rows inside its loop instead (<c>ahead</c> in <see cref="Dot.Q8_0x4"/>).
    /// </summary>
    private const int PrefetchRows = 4;

    private readonly WorkerPool _pool;
    private readonly NativeBuffer<float>[] _scratch;
    private readonly int _scratchFloats;
    private readonly QuantisedActivations _activations = new();

    private float* _x;
    private int _tokens;
    private readonly Part[] _parts = new Part[3];
    private int _partCount;

    /// <summary>One weight matrix of a call, its output, and its share of the call's panels.</summary>
    private struct Part
    {
        public WeightTensor W;
        public float* Y;
        public int PanelRows, FirstPanel, Panels;
        public bool IntegerDots;
    }

    /// <summary>Creates a kernel for weights with at most <paramref name="maxColumns"/> columns.</summary>
    public MatMul(WorkerPool pool, int maxColumns)
    {
        _pool = pool;
        _scratchFloats = Math.Max(16 * maxColumns, PanelBytesTarget / 4 + maxColumns);
        _scratch = new NativeBuffer<float>[pool.ThreadCount];
        for (int i = 0; i < _scratch.Length; i++) _scratch[i] = new NativeBuffer<float>(_scratchFloats);
    }

    /// <summary>
    /// Multiplies <paramref name="tokens"/> rows of <paramref name="x"/> (row stride W.Columns) by Wᵀ into
    /// <paramref name="y"/> (row stride W.Rows).
    /// </summary>
    public void Multiply(float* x, int tokens, in WeightTensor w, float* y)
    {
        _partCount = 0;
        Add(w, y, tokens);
        Run(x, tokens);
    }

    /// <summary>
    /// Two products of the same input in one pass over the workers (gate and up): y0 = x·W0ᵀ, y1 = x·W1ᵀ, each exactly
    /// as <see cref="Multiply(float*, int, in WeightTensor, float*)"/> computes it.
    /// </summary>
    public void Multiply(float* x, int tokens, in WeightTensor w0, float* y0, in WeightTensor w1, float* y1)
    {
        _partCount = 0;
        Add(w0, y0, tokens);
        Add(w1, y1, tokens);
        Run(x, tokens);
    }

    /// <summary>Three products of the same input in one pass over the workers (query, key, value).</summary>
    public void Multiply(float* x, int tokens, in WeightTensor w0, float* y0, in WeightTensor w1, float* y1, in WeightTensor w2, float* y2)
    {
        _partCount = 0;
        Add(w0, y0, tokens);
        Add(w1, y1, tokens);
        Add(w2, y2, tokens);
        Run(x, tokens);
    }

    private void Add(in WeightTensor w, float* y, int tokens)
    {
        if (w.Columns % w.Type.BlockLength() != 0) throw new NotSupportedException($"{w.Type} '{w.Name}' has {w.Columns} columns, not whole blocks of {w.Type.BlockLength()}.");
        if (16L * w.Columns > _scratchFloats) throw new ArgumentException($"'{w.Name}' has {w.Columns} columns, more than this kernel was sized for.");
        if (_partCount > 0 && w.Columns != _parts[0].W.Columns) throw new ArgumentException($"'{w.Name}' has {w.Columns} columns, '{_parts[0].W.Name}' {_parts[0].W.Columns}: one input needs one width.");
        // Panels that fit the scratch (about L2), at least 16 rows, and at least four per thread so small matrices spread evenly.
        int byCache = Math.Max(16, _scratchFloats / w.Columns / PanelRowAlign * PanelRowAlign);
        int byBalance = Math.Max(PanelRowAlign, (w.Rows / (4 * _pool.ThreadCount) + PanelRowAlign - 1) / PanelRowAlign * PanelRowAlign);
        int panelRows = tokens == 1 ? 16 : Math.Min(byCache, byBalance);
        panelRows = (panelRows + w.Type.InterleavedRows() - 1) / w.Type.InterleavedRows() * w.Type.InterleavedRows();
        int first = _partCount == 0 ? 0 : _parts[_partCount - 1].FirstPanel + _parts[_partCount - 1].Panels;
        _parts[_partCount++] = new Part
        {
            W = w, Y = y, PanelRows = panelRows, FirstPanel = first, Panels = (w.Rows + panelRows - 1) / panelRows,
            IntegerDots = BlockDot.IsSupported && (BlockDot.Handles(w.Type) || InterleavedDot.Handles(w.Type)),
        };
    }

    private void Run(float* x, int tokens)
    {
        _x = x;
        _tokens = tokens;
        long work = 0;
        bool quantise = false;
        for (int i = 0; i < _partCount; i++)
        {
            work += (long)tokens * _parts[i].W.Rows * _parts[i].W.Columns;
            quantise |= _parts[i].IntegerDots;
        }
        if (quantise) _activations.Quantise(x, tokens, _parts[0].W.Columns);
        var last = _parts[_partCount - 1];
        int panels = last.FirstPanel + last.Panels;
        if (work < ParallelThreshold) Execute(0, panels, 0);
        else _pool.Run(this, panels);
    }

    /// <inheritdoc />
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Execute(int start, int end, int worker)
    {
        for (int i = 0; i < _partCount; i++)
        {
            ref readonly var p = ref _parts[i];
            int from = Math.Max(start, p.FirstPanel) - p.FirstPanel, to = Math.Min(end, p.FirstPanel + p.Panels) - p.FirstPanel;
            if (from >= to) continue;
            int rowStart = from * p.PanelRows, rowEnd = Math.Min(p.W.Rows, to * p.PanelRows);
            if (p.IntegerDots) BlockRows(p, rowStart, rowEnd);
            else if (_tokens == 1) Gemv(p, rowStart, rowEnd, _scratch[worker].Pointer);
            else
            {
                for (int r = rowStart; r < rowEnd; r += p.PanelRows)
                    GemmPanel(p, r, Math.Min(rowEnd, r + p.PanelRows), _scratch[worker].Pointer);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Gemv(in Part p, int rowStart, int rowEnd, float* scratch)
    {
        int k = p.W.Columns, r = rowStart;
        float* x = _x;
        float* partial = stackalloc float[4];
        switch (p.W.Type)
        {
            case DType.F32 or DType.BF16 or DType.F16:
                // Rows one after the other (16-bit ones widened in registers): a thread reads one sequential stream,
                // which the hardware prefetchers follow. Four rows at a time (x shared, the next four asked for as they
                // went) streamed the Qwen2.5-0.5B-shape matrices 3-16% slower (f32 3-4%) on the Zen 5 VM, behind in 84 of
                // 96 alternating passes (benchmarks/results/gemv-one-row-ab-zen5-2026-12-02.txt).
                for (; r < rowEnd; r++)
                {
                    float sum = 0;
                    for (int c0 = 0; c0 < k; c0 += KChunk) sum += RowDot(p.W, r, x, c0, Math.Min(KChunk, k - c0));
                    p.Y[r] = sum;
                }
                break;
            case DType.Q8_0 when Vector512.IsHardwareAccelerated:
                // q8_0 blocks are widened in registers, four rows at a time; 1024-column chunks are whole blocks.
                byte* q = (byte*)p.W.Data;
                long rowBytes = k / 32 * 34;
                for (; r <= rowEnd - 4; r += 4)
                {
                    byte* rows = q + r * rowBytes, next = r + 8 <= rowEnd ? rows + 4 * rowBytes : null;
                    for (int c0 = 0; c0 < k; c0 += KChunk)
                    {
                        int offset = c0 / 32 * 34;
                        Dot.Q8_0x4(x + c0, rows + offset, Math.Min(KChunk, k - c0), rowBytes, partial, next == null ? null : next + offset);
                        Accumulate(p.Y + r, partial, c0 == 0);
                    }
                }
                for (; r < rowEnd; r++)
                {
                    float sum = 0;
                    for (int c0 = 0; c0 < k; c0 += KChunk) sum += Dot.Q8_0(x + c0, q + r * rowBytes + c0 / 32 * 34, Math.Min(KChunk, k - c0));
                    p.Y[r] = sum;
                }
                break;
            default:
                // The rest (q8_0 without 512-bit vectors, block formats without AVX2) is dequantised four rows at a time into scratch.
                for (; r < rowEnd; r += 4)
                {
                    int rows = Math.Min(4, rowEnd - r);
                    p.W.ReadRows(r, rows, new Span<float>(scratch, rows * k));
                    RowsTimesToken(k, scratch, rows, x, p.Y + r);
                }
                break;
        }
    }

    /// <summary>Σ over columns [<paramref name="column"/>, + <paramref name="length"/>) of x·W[<paramref name="row"/>] for f32, bf16 or f16 weights.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RowDot(in WeightTensor w, int row, float* x, int column, int length)
    {
        long at = (long)row * w.Columns + column;
        return w.Type switch
        {
            DType.F32 => Dot.F32(x + column, (float*)w.Data + at, length),
            DType.F16 => Dot.F16(x + column, (ushort*)w.Data + at, length),
            _ => Dot.BF16(x + column, (ushort*)w.Data + at, length),
        };
    }

    /// <summary>Rows of block-quantised weights against every token: groups of eight interleaved rows through <see cref="InterleavedDot"/>, other rows one <see cref="BlockDot.Row"/> per (token, row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void BlockRows(in Part p, int rowStart, int rowEnd)
    {
        byte* w = (byte*)p.W.Data;
        long rowBytes = p.W.Type.BytesFor(p.W.Columns);
        int n = p.W.Rows;
        if (InterleavedDot.Handles(p.W.Type))
        {
            // rowStart is a multiple of 8 (panels are): whole groups of eight interleaved rows.
            for (int r = rowStart; r < rowEnd; r += 8) InterleavedDot.Group(p.W.Type, w + r * rowBytes, _activations, 0, _tokens, p.Y + r, n);
            return;
        }
        for (int r = rowStart; r < rowEnd; r++)
        {
            if (_tokens == 1 && r + PrefetchRows < rowEnd) Prefetch(w + (r + PrefetchRows) * rowBytes, rowBytes);
            for (int t = 0; t < _tokens; t++) p.Y[(long)t * n + r] = BlockDot.Row(p.W.Type, w + r * rowBytes, _activations, t);
        }
    }

    /// <summary>y[i] = Σ_k x[k]·w_i[k] for up to four f32 rows (stride K), chunked like every other path.</summary>
    private static void RowsTimesToken(int k, float* w, int rows, float* x, float* y)
    {
        float* partial = stackalloc float[4];
        if (rows == 4)
        {
            for (int c0 = 0; c0 < k; c0 += KChunk)
            {
                Dot.F32x4(x + c0, w + c0, Math.Min(KChunk, k - c0), k, partial);
                Accumulate(y, partial, c0 == 0);
            }
            return;
        }
        for (int i = 0; i < rows; i++)
        {
            float sum = 0;
            for (int c0 = 0; c0 < k; c0 += KChunk) sum += Dot.F32(x + c0, w + (long)i * k + c0, Math.Min(KChunk, k - c0));
            y[i] = sum;
        }
    }

    /// <summary>
    /// Asks for <paramref name="bytes"/> from <paramref name="p"/> to be brought into L1, a line at a time (x86; elsewhere
    /// nothing). The interleaved block dots ask a few lines with every block this way: into L2 instead, the
    /// Llama-3.2-1B-shape q4_K decode measured 34–36 tok/s against 38–40 (alternating, the 2-core AMD EPYC VM).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Prefetch(void* p, long bytes)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported) return;
        for (long offset = 0; offset < bytes; offset += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch0((byte*)p + offset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate(float* y, float* partial, bool first)
    {
        for (int i = 0; i < 4; i++) y[i] = first ? 0 + partial[i] : y[i] + partial[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void GemmPanel(in Part p, int rowStart, int rowEnd, float* panel)
    {
        int k = p.W.Columns, rows = rowEnd - rowStart, n = p.W.Rows;
        float* w;
        if (p.W.Type == DType.F32) w = (float*)p.W.Data + (long)rowStart * k;
        else
        {
            p.W.ReadRows(rowStart, rows, new Span<float>(panel, rows * k));
            w = panel;
        }

        float* partial = stackalloc float[4];
        int fullRows = rows / 4 * 4;
        int tokenBlock = Math.Max(4, TokenBlockBytes / 4 / Math.Min(k, KChunk) / 4 * 4);
        bool tiled = Vector512.IsHardwareAccelerated;
        for (int t0 = 0; t0 < _tokens; t0 += tokenBlock)
        {
            int t1 = Math.Min(_tokens, t0 + tokenBlock);
            for (int r = 0; r < fullRows; r += 4)
            {
                for (int c0 = 0; c0 < k; c0 += KChunk)
                {
                    int len = Math.Min(KChunk, k - c0);
                    int t = t0;
                    if (tiled && len % 16 == 0)
                        for (; t <= t1 - 4; t += 4) Tile4x4(p, w + (long)r * k + c0, k, len, t, c0, rowStart + r, c0 == 0);
                    for (; t < t1; t++)
                    {
                        Dot.F32x4(_x + (long)t * k + c0, w + (long)r * k + c0, len, k, partial);
                        Accumulate(p.Y + (long)t * n + rowStart + r, partial, c0 == 0);
                    }
                }
            }
            for (int r = fullRows; r < rows; r++)
                for (int t = t0; t < t1; t++) RowsTimesToken(k, w + (long)r * k, 1, _x + (long)t * k, p.Y + (long)t * n + rowStart + r);
        }
    }

    /// <summary>
    /// Four weight rows against four tokens over one K chunk: 16 accumulators, 8 loads per 16 FMAs; the chunk's sums
    /// are stored (first chunk) or added to y.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Tile4x4(in Part p, float* w, int stride, int length, int t, int column, int row, bool first)
    {
        float* x0 = _x + (long)t * stride + column, x1 = x0 + stride, x2 = x1 + stride, x3 = x2 + stride;
        float* w0 = w, w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
        for (int i = 0; i < length; i += 16)
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
        int n = p.W.Rows;
        float* y0 = p.Y + (long)t * n + row, y1 = y0 + n, y2 = y1 + n, y3 = y2 + n;
        Store(y0, first, Vector512.Sum(a00), Vector512.Sum(a10), Vector512.Sum(a20), Vector512.Sum(a30));
        Store(y1, first, Vector512.Sum(a01), Vector512.Sum(a11), Vector512.Sum(a21), Vector512.Sum(a31));
        Store(y2, first, Vector512.Sum(a02), Vector512.Sum(a12), Vector512.Sum(a22), Vector512.Sum(a32));
        Store(y3, first, Vector512.Sum(a03), Vector512.Sum(a13), Vector512.Sum(a23), Vector512.Sum(a33));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, bool first, float s0, float s1, float s2, float s3)
    {
        if (first) { y[0] = 0 + s0; y[1] = 0 + s1; y[2] = 0 + s2; y[3] = 0 + s3; }
        else { y[0] += s0; y[1] += s1; y[2] += s2; y[3] += s3; }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var buffer in _scratch) buffer.Dispose();
        _activations.Dispose();
    }
}
