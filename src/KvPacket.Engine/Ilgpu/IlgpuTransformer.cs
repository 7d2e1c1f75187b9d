using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Ilgpu;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Ilgpu;

/// <summary>
/// The forward pass on an ILGPU accelerator — CUDA, or ILGPU's CPU accelerator, which runs the same kernels on the host
/// so CI covers GPU kernel logic — behind the same contract as the CPU and CUDA backends: ragged steps with soft tokens,
/// packets placed as shared, query-realigned blocks, prefix sharing, packets to and from the store. f32 weights and KV.
/// CacheBlend's selective recompute is refused (<see cref="NotSupportedException"/>), as are token-pruned packets.
/// Work on one instance must come from one thread at a time.
/// </summary>
public sealed class IlgpuTransformer : IForwardBackend
{
    private readonly Accelerator _accelerator;
    private readonly ModelConfig _config;
    private readonly IlgpuKvBlocks _blocks;
    private readonly BlockTables _sequences = new();
    private readonly int _maxTokens, _maxChunks, _maxContext;
    private HostTokenDraws? _hostDraws;   // a step with draws other than the argmax draws on the host
    private readonly List<MemoryBuffer> _owned = [];
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _embedding, _finalNorm, _unitNorm, _cos, _sin, _none;
    private readonly Matrix _classifier;
    private readonly Layer[] _layers;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _x, _xb, _q, _k, _v, _att, _rotated, _partial, _ffn, _soft, _logits;
    // A step's metadata travels in one copy: the host array and the device buffer hold the same sections (per token:
    // id, position, block, slot, chunk; per chunk: the row that gets logits, table start and length; then the entries).
    private readonly int[] _stepHost;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _step, _allRows;
    private readonly ArrayView<int> _ids, _positions, _blockIds, _slots, _tokenChunk, _rows, _tableStart, _tableLength, _entries;
    private readonly int _entriesAt;

    private readonly Action<Index2D, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> _embed;
    private readonly Action<Index2D, ArrayView<byte>, ArrayView<float>, int, int, int, int> _decodeInt8Block;
    private MemoryBuffer1D<byte, Stride1D.Dense>? _int8Staging;   // int8 blocks on their way into the cache (BeginImportInt8), twice the largest packet yet
    private readonly Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float>? _rmsNorm;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float, int>? _rmsNormGroup;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int>? _matMul;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, int>? _matMulWarp, _matMulTiled;
    private readonly Action<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>? _swiGlu;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, float>? _swiGluWarp;
    private readonly IlgpuAttentionKernels _attention;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int> _argMaxSlices;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int> _argMaxMerge;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _sliceBest;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _sliceAt, _next;
    private readonly int _slices;

    private sealed record Matrix(MemoryBuffer1D<float, Stride1D.Dense> Weights, MemoryBuffer1D<float, Stride1D.Dense>? Bias, int Rows, int Columns);

    /// <summary>
    /// A block's weights; the query, key and value rows in one matrix (one launch), in that order. The attention norm's
    /// weight is folded into that matrix's columns and the FFN norm's into gate and up (RMSNorm(x) ⊙ g · wᵀ = x / rms(x)
    /// · (w ⊙ g)ᵀ), so a product can normalise its own input and the norms cost no launch in decode.
    /// </summary>
    private sealed record Layer(Matrix QueryKeyValue, Matrix Output, Matrix Gate, Matrix Up, Matrix Down);

    /// <summary>
    /// Uploads <paramref name="model"/> to <paramref name="accelerator"/> for steps of up to <paramref name="maxTokens"/>
    /// tokens in up to <paramref name="maxSequences"/> sequences, with a KV cache of <paramref name="kvTokens"/> tokens; the
    /// attention kernels compiled with the model card's constants when its shape has a card and <paramref name="specialised"/>.
    /// <paramref name="warps"/> picks the kernels: a GPU's (warps, groups and tiles; the norms folded into the products in
    /// decode) or ILGPU's CPU accelerator's (a thread per output); unset, the accelerator's own kind. Tests set it to run
    /// the GPU's kernels on a CPU accelerator that emulates an NVIDIA device.
    /// </summary>
    public IlgpuTransformer(Checkpoint model, Accelerator accelerator, int maxTokens = 256, int kvTokens = 4096, int maxSequences = 32, bool specialised = true,
        bool? warps = null)
    {
        _accelerator = accelerator;
        Model = model;
        var c = _config = model.Config;
        _maxTokens = maxTokens;
        _maxChunks = Math.Min(maxSequences, maxTokens);
        _maxContext = Math.Min(kvTokens, c.MaxContextLength);
        var layout = KvCacheLayout.For(c, Core.Memory.DType.F32);
        _blocks = new IlgpuKvBlocks(accelerator, layout, (kvTokens + layout.BlockSize - 1) / layout.BlockSize);

        _embedding = Upload(model.TokenEmbedding);
        _classifier = Product([model.Classifier], [default]);
        _finalNorm = Upload(model.FinalNorm);
        _none = Floats(1);
        _unitNorm = Upload([.. Enumerable.Repeat(1f, c.HiddenSize)]);
        _layers = [.. model.Layers.Select(l => new Layer(Product([l.Query, l.Key, l.Value], [l.QueryBias, l.KeyBias, l.ValueBias], l.AttentionNorm),
            Product([l.Output], [default]), Product([l.Gate], [default], l.FfnNorm), Product([l.Up], [default], l.FfnNorm), Product([l.Down], [default])))];

        // cos and sin of every position and pair, as the CPU backend computes them.
        var rope = new RotaryEmbedding(c);
        int half = c.HeadDim / 2;
        var cos = new float[(long)_maxContext * half];
        var sin = new float[cos.Length];
        for (int p = 0; p < _maxContext; p++) rope.Angles(p, cos.AsSpan(p * half, half), sin.AsSpan(p * half, half));
        _cos = Floats(cos.Length);
        _cos.View.CopyFromCPU(cos);
        _sin = Floats(sin.Length);
        _sin.View.CopyFromCPU(sin);

        int t = maxTokens;
        _x = Floats((long)t * c.HiddenSize);
        _xb = Floats((long)t * Math.Max(c.HiddenSize, c.QueryDim));
        _q = Floats((long)t * c.QueryDim);
        _k = Floats((long)t * c.KvDim);
        _v = Floats((long)t * c.KvDim);
        _att = Floats((long)t * c.QueryDim);
        // Attention's scratch: a rotated query per row and split, and each split's (max, sum, output) when rows are split.
        _rotated = Floats((long)Math.Max(t * c.HeadCount, SplitRows) * c.HeadDim);
        _partial = Floats((long)SplitRows * (c.HeadDim + 2));
        _ffn = Floats((long)t * c.IntermediateSize);
        _soft = Floats((long)t * c.HiddenSize);
        _logits = Floats((long)t * c.VocabSize);
        _allRows = Ints(t);
        _allRows.View.CopyFromCPU([.. Enumerable.Range(0, t)]);
        int maxEntries = _blocks.BlockCount + _maxChunks * (_maxContext / layout.BlockSize + 64);
        _entriesAt = 5 * t + 3 * _maxChunks;
        _stepHost = new int[_entriesAt + 5 * maxEntries];
        _step = Ints(_stepHost.Length);
        var step = _step.View;
        (_ids, _positions, _blockIds, _slots, _tokenChunk) = (step.SubView(0, t), step.SubView(t, t), step.SubView(2 * t, t), step.SubView(3 * t, t), step.SubView(4 * t, t));
        (_rows, _tableStart, _tableLength) = (step.SubView(5 * t, _maxChunks), step.SubView(5 * t + _maxChunks, _maxChunks), step.SubView(5 * t + 2 * _maxChunks, _maxChunks));
        _entries = step.SubView(_entriesAt, 5 * maxEntries);

        _embed = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(IlgpuKernels.Embed);
        _decodeInt8Block = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<byte>, ArrayView<float>, int, int, int, int>(IlgpuKernels.DecodeInt8Block);
        // Norms and products: a group or warp per row on a GPU (tiles for many tokens); a thread per row or output on the
        // CPU accelerator, whose warps are emulated.
        bool gpuKernels = warps ?? accelerator.AcceleratorType != AcceleratorType.CPU;
        if (!gpuKernels)
        {
            _rmsNorm = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float>(IlgpuKernels.RmsNorm);
            _matMul = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                int, int, int, int, int, int>(IlgpuKernels.MatMul);
            _swiGlu = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(IlgpuKernels.MatMulSwiGlu);
        }
        else
        {
            _rmsNormGroup = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, float, int>(IlgpuKernels.RmsNormGroup);
            _matMulWarp = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                int, int, int, int, int, int, int>(IlgpuKernels.MatMulWarp);
            _matMulTiled = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                int, int, int, int, int, int, int>(IlgpuKernels.MatMulTiled);
            _swiGluWarp = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, float>(IlgpuKernels.MatMulSwiGluWarp);
        }
        int interleaved = c.RopeStyle == RopeStyle.Interleaved ? 1 : 0;
        var spec = specialised ? Compute.Specialised.ModelSpec.For(c) : null;
        _attention = spec?.LoadIlgpuKernels(accelerator, interleaved, gpuKernels)
                     ?? IlgpuAttentionKernels.Load(accelerator, new IlgpuShape(c.HeadCount, c.KvHeadCount, c.HeadDim, layout.BlockSize, c.LayerCount, interleaved), "generic", gpuKernels);
        _argMaxSlices = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, int, int>(IlgpuKernels.ArgMaxSlices);
        _argMaxMerge = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, int, int>(IlgpuKernels.ArgMaxMerge);
        _slices = Math.Clamp(c.VocabSize / 2048, 1, 64);   // about 2k logits per group: a greedy step's argmax in a few µs
        _sliceBest = Floats((long)_maxChunks * _slices);
        _sliceAt = Ints((long)_maxChunks * _slices);
        _next = Ints(_maxChunks);
    }

    /// <summary>The ILGPU context and accelerator this backend was opened on, disposed with it (null: the caller's to dispose).</summary>
    public IlgpuDevice? OwnedDevice { get; init; }

    /// <summary>Where each stage's device time goes when set (the stages of the NVRTC backend's timeline, by the same names).</summary>
    public IlgpuTimeline? Timeline { get; set; }
    private IlgpuTimeline? _stageTimeline;   // made by TimeStages

    /// <inheritdoc />
    public Checkpoint Model { get; }

    /// <summary>The model card whose constants the attention kernels were compiled with, or "generic".</summary>
    public string Kernels => _attention.Shape;

    /// <inheritdoc />
    public ModelConfig Config => _config;

    /// <inheritdoc />
    public KvBlocks KvBlocks => _blocks;

    /// <inheritdoc />
    public int MaxSequenceLength => _maxContext;

    /// <inheritdoc />
    public int MaxStepTokens => _maxTokens;

    /// <inheritdoc />
    public int MaxStepSequences => _maxChunks;

    /// <inheritdoc />
    public int CreateSequence() => _sequences.Create();

    /// <inheritdoc />
    public void ReleaseSequence(int sequence)
    {
        _sequences[sequence].Release(_blocks);
        _sequences.Remove(sequence);
    }

    /// <inheritdoc />
    public int SequenceLength(int sequence) => _sequences[sequence].Length;

    /// <inheritdoc />
    public bool TimeStages(bool on)
    {
        if (on) Timeline = _stageTimeline ??= new IlgpuTimeline(_accelerator);
        else if (Timeline == _stageTimeline) Timeline = null;
        return true;
    }

    /// <inheritdoc />
    public IReadOnlyDictionary<string, double> TakeStageTimes() =>
        Timeline is { } timeline ? timeline.Totals() : System.Collections.Frozen.FrozenDictionary<string, double>.Empty;

    /// <inheritdoc />
    public int BlocksNeededFor(int sequence, int tokens) => _sequences[sequence].BlocksNeededFor(tokens, _blocks.Layout.BlockSize);

    /// <inheritdoc />
    public int SharePrefix(int sequence, int source, int upTo) => _sequences[sequence].ShareFrom(_sequences[source], upTo, _blocks);

    /// <inheritdoc />
    public void AppendPacket(int sequence, Packet packet, int skip = 0, int keyOrigin = -1) => _sequences[sequence].Place(packet, skip, _blocks, _maxContext, keyOrigin);

    /// <inheritdoc />
    public void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, Span<float> logits)
    {
        Run(sequences, lengths, tokens, soft, allRows: false);
        Download(sequences.Length, logits);
    }

    /// <inheritdoc />
    /// <remarks>The argmax is taken on the device; a step with any other draw brings its logits to the host and draws there.</remarks>
    public void StepDraw(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, ReadOnlySpan<TokenDraw> draws,
        Span<int> next)
    {
        Run(sequences, lengths, tokens, soft, allRows: false);
        int rows = sequences.Length, vocab = _config.VocabSize;
        if (!TokenDraw.AllGreedy(draws[..rows]))
        {
            _hostDraws ??= new HostTokenDraws(_maxChunks, vocab);
            Download(rows, _hostDraws.Logits(rows));
            _hostDraws.Choose(draws[..rows], next);
            return;
        }
        Timeline?.Mark("argmax, ids to the host");
        _argMaxSlices(new KernelConfig(rows * _slices, Math.Min(IlgpuKernels.NormThreads, _accelerator.MaxNumThreadsPerGroup)),
            _logits.View, _sliceBest.View, _sliceAt.View, vocab, _slices);
        _argMaxMerge(IlgpuKernels.WarpGroups(_accelerator, rows), _sliceBest.View, _sliceAt.View, _next.View, _slices, rows);
        _next.View.AsContiguous().SubView(0, rows).CopyToCPU(next[..rows]);
        Timeline?.Close();
    }

    /// <inheritdoc />
    public void Prefill(int sequence, ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken)
    {
        int vocab = _config.VocabSize;
        Span<int> one = [sequence];
        for (int offset = 0; offset < tokens.Length; offset += _maxTokens)
        {
            int n = Math.Min(_maxTokens, tokens.Length - offset);
            Span<int> length = [n];
            Run(one, length, tokens.Slice(offset, n), default, which == LogitsFor.AllTokens);
            if (which == LogitsFor.AllTokens) Download(n, logits.Slice(offset * vocab, n * vocab));
        }
        if (which == LogitsFor.LastToken && !logits.IsEmpty && !tokens.IsEmpty) Download(1, logits[..vocab]);
    }

    /// <inheritdoc />
    public void PrefillSoft(int sequence, ReadOnlySpan<float> embeddings, Span<float> logits)
    {
        int hidden = _config.HiddenSize;
        if (embeddings.Length % hidden != 0) throw new ArgumentException($"Soft tokens are rows of {hidden} floats; got {embeddings.Length}.", nameof(embeddings));
        Span<int> one = [sequence];
        Span<int> ids = stackalloc int[Math.Min(_maxTokens, embeddings.Length / hidden)];
        for (int i = 0; i < ids.Length; i++) ids[i] = -1 - i;   // a negative id is soft row −1 − id
        for (int offset = 0; offset < embeddings.Length; offset += _maxTokens * hidden)
        {
            int n = Math.Min(_maxTokens, (embeddings.Length - offset) / hidden);
            Span<int> length = [n];
            Run(one, length, ids[..n], embeddings.Slice(offset, n * hidden), allRows: false);
        }
        if (!logits.IsEmpty && !embeddings.IsEmpty) Download(1, logits[.._config.VocabSize]);
    }

    /// <inheritdoc />
    public Packet BuildPacket(ReadOnlySpan<int> tokens, ReadOnlySpan<float> header = default, ReadOnlySpan<float> trailer = default, double keep = 1.0) =>
        keep != 1.0 ? throw new NotSupportedException("Token-pruned packets are built by the CPU backend only; the ILGPU backend builds whole packets.")
            : _sequences.BuildPacket(this, tokens, header, trailer);

    /// <inheritdoc />
    public Packet ImportPacket(Packet packet)
    {
        if (ReferenceEquals(packet.Pool, _blocks)) return packet.Share();
        var host = packet.Pool as KvBlockPool ?? throw new ArgumentException("The packet lives in another device's cache.", nameof(packet));
        _accelerator.Bind();
        return packet.CopyTo(_blocks, (from, to) => _blocks.Block(to).AsContiguous().CopyFromCPU(MemoryMarshal.Cast<byte, float>(host.BlockBytes(from))));
    }

    /// <inheritdoc />
    public bool DecodesInt8Blocks => true;

    /// <inheritdoc />
    /// <remarks>Each block's int8 bytes, with the id of the cache block they become after them, are copied into a device
    /// staging slot; one kernel decodes the packet's slots into the cache.</remarks>
    public Packet BeginImportInt8(Packet packet)
    {
        var host = packet.Pool as KvBlockPool ?? throw new ArgumentException("The packet lives in another device's cache.", nameof(packet));
        var layout = _blocks.Layout;
        int slot = Int8KvBlock.StagedBytes(layout), count = packet.Blocks.Count;
        _accelerator.Bind();
        if (_int8Staging is null || _int8Staging.Length < (long)count * slot)
        {
            _accelerator.Synchronize();   // a smaller staging may still be read by a queued decode
            _int8Staging?.Dispose();
            _int8Staging = _accelerator.Allocate1D<byte>(2L * count * slot);
        }
        var staging = _int8Staging.View;
        int next = 0;
        var imported = packet.CopyTo(_blocks, (from, to) =>
        {
            staging.SubView((long)next++ * slot, slot).AsContiguous().CopyFromCPU(Int8KvBlock.Stage(host.BlockBytes(from), layout, to));
        });
        int blockFloats = (int)(layout.BlockBytes / layout.ElementBytes);
        _decodeInt8Block(new Index2D(blockFloats, count), staging, _blocks.Memory.View, slot, Int8KvBlock.SegmentCount(layout), Int8KvBlock.SegmentLength(layout), blockFloats);
        return imported;
    }

    /// <inheritdoc />
    public Packet ExportPacket(Packet packet, KvBlockPool host)
    {
        if (!ReferenceEquals(packet.Pool, _blocks)) throw new ArgumentException("The packet is not in this device's cache.", nameof(packet));
        _accelerator.Bind();
        return packet.CopyTo(host, (from, to) => _blocks.Block(from).AsContiguous().CopyToCPU(MemoryMarshal.Cast<byte, float>(host.BlockBytes(to))));
    }

    /// <inheritdoc />
    public void PlacePacketCopy(int sequence, Packet packet) =>
        throw new NotSupportedException("CacheBlend (private packet copies, selective recompute) is not implemented on the ILGPU backend.");

    /// <inheritdoc />
    public int BlendRecompute(int sequence, ReadOnlySpan<int> tokens, int firstPosition, double fraction) =>
        throw new NotSupportedException("CacheBlend (private packet copies, selective recompute) is not implemented on the ILGPU backend.");

    /// <summary>
    /// One step: a negative id −1 − r takes row r of <paramref name="soft"/>; logits for every token with
    /// <paramref name="allRows"/> (one chunk), else for each chunk's last token, left in the device's logits buffer.
    /// </summary>
    private void Run(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, bool allRows)
    {
        var c = _config;
        int n = tokens.Length, chunks = sequences.Length, hidden = c.HiddenSize, softRows = soft.Length / hidden;
        if (n == 0) return;
        if (n > _maxTokens || chunks > _maxChunks) throw new ArgumentOutOfRangeException(nameof(tokens), $"A step takes at most {_maxTokens} tokens in {_maxChunks} sequences.");
        var timeline = Timeline;
        timeline?.Mark("step metadata to the device");
        foreach (int token in tokens)
            if (token >= c.VocabSize || token < -softRows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} is outside the vocabulary of {c.VocabSize} (or the {softRows} soft rows).");

        // Host metadata: each token's position, block, slot and chunk; each chunk's table; the rows that get logits.
        int t0 = _maxTokens;
        Span<int> host = _stepHost;
        Span<int> positions = host.Slice(t0, n), blocks = host.Slice(2 * t0, n), slots = host.Slice(3 * t0, n), chunkOf = host.Slice(4 * t0, n);
        Span<int> rowsOf = host.Slice(5 * t0, chunks), tableStart = host.Slice(5 * t0 + _maxChunks, chunks), tableLength = host.Slice(5 * t0 + 2 * _maxChunks, chunks);
        Span<int> entries = host[_entriesAt..];
        tokens.CopyTo(host);
        int offset = 0, entryCount = 0;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            var table = _sequences[sequences[chunk]];
            int length = lengths[chunk];
            if (table.Length + length > _maxContext) throw new ArgumentOutOfRangeException(nameof(tokens), $"Sequence {sequences[chunk]} would exceed {_maxContext} tokens.");
            for (int t = 0; t < length; t++)
            {
                positions[offset + t] = table.Length + t;
                (blocks[offset + t], slots[offset + t]) = table.Claim(table.Length + t, _blocks);
                chunkOf[offset + t] = chunk;
            }
            if (5 * (entryCount + table.Entries.Count) > entries.Length)
                throw new InvalidOperationException("A step's block tables hold more entries than this backend was sized for (many packets in many sequences).");
            MemoryMarshal.Cast<BlockEntry, int>(CollectionsMarshal.AsSpan(table.Entries)).CopyTo(entries[(5 * entryCount)..]);
            tableStart[chunk] = entryCount;
            tableLength[chunk] = table.Entries.Count;
            entryCount += table.Entries.Count;
            rowsOf[chunk] = offset + length - 1;
            offset += length;
        }
        if (offset != n) throw new ArgumentException($"The chunk lengths add up to {offset}, not {n} tokens.", nameof(lengths));
        // The scheduler resumes on pool threads: the accelerator's context is made current on whichever thread steps.
        _accelerator.Bind();
        _step.View.AsContiguous().SubView(0, _entriesAt + 5 * entryCount).CopyFromCPU(_stepHost.AsSpan(0, _entriesAt + 5 * entryCount));
        if (softRows > 0) _soft.View.AsContiguous().SubView(0, soft.Length).CopyFromCPU(soft);

        float epsilon = (float)c.NormEpsilon, scale = 1f / MathF.Sqrt(c.HeadDim);
        // Few rows (decode) leave most of the GPU idle: spread each row's entries over warps, down to one entry each.
        int mostEntries = 0;
        foreach (int entriesOfChunk in tableLength) mostEntries = Math.Max(mostEntries, entriesOfChunk);
        int splits = Math.Clamp(Math.Min(mostEntries, SplitRows / (c.HeadCount * n)), 1, MaxSplits);
        // Few tokens on a GPU: the products normalise their own input and the q/k/v product appends K and V itself.
        bool fused = _attention.ProjectQkv is not null && n < TiledFrom;
        timeline?.Mark("embed");
        _embed(new Index2D(hidden, n), _ids, _embedding.View, _soft.View, _x.View, hidden);
        for (int layer = 0; layer < _layers.Length; layer++)
        {
            var w = _layers[layer];
            if (fused)
            {
                timeline?.Mark("rms_norm + qkv product + kv_append");
                _attention.ProjectQkv!(w.QueryKeyValue.Weights.View, _x.View, (w.QueryKeyValue.Bias ?? _none).View, _q.View, _blocks.Memory.View, _blockIds, _slots,
                    _positions, _cos.View, _sin.View, new IlgpuKernels.ProjectionStep
                    {
                        Layer = layer, Tokens = n, Columns = hidden, HasBias = w.QueryKeyValue.Bias is null ? 0 : 1, Epsilon = epsilon,
                    });
            }
            else
            {
                timeline?.Mark("rms_norm");
                Normalise(n, _allRows.View, _unitNorm, epsilon);
                timeline?.Mark("qkv product");
                Multiply(w.QueryKeyValue, _xb, n, _q, _k, _v, c.QueryDim, c.KvDim);
                timeline?.Mark("kv_append");
                _attention.AppendKv(new Index2D(c.KvDim / 2, n), _k.View, _v.View, _blocks.Memory.View, _blockIds, _slots, _positions, _cos.View, _sin.View, layer);
            }
            timeline?.Mark("attention");
            _attention.Attention(new Index2D(c.HeadCount, n), _q.View, _blocks.Memory.View, _entries, _tableStart, _tableLength, _tokenChunk,
                _positions, _cos.View, _sin.View, _rotated.View, _att.View, layer, scale, _partial.View, splits);
            timeline?.Mark("output product");
            Multiply(w.Output, _att, _x, n, accumulate: true);
            if (fused) timeline?.Mark("rms_norm + gate/up product + swiglu");
            else
            {
                timeline?.Mark("rms_norm");
                Normalise(n, _allRows.View, _unitNorm, epsilon);
                timeline?.Mark("gate/up product + swiglu");
            }
            GateUp(w, n, epsilon, fused);
            timeline?.Mark("down product");
            Multiply(w.Down, _ffn, _x, n, accumulate: true);
        }
        int rows = allRows ? n : chunks;
        timeline?.Mark("final norm + classifier");
        Normalise(rows, allRows ? _allRows.View : _rows, _finalNorm, epsilon);
        Multiply(_classifier, _xb, _logits, rows);
        timeline?.Mark("synchronise");
        _accelerator.Synchronize();
        timeline?.Close();
        for (int chunk = 0; chunk < chunks; chunk++) _sequences[sequences[chunk]].Length += lengths[chunk];
    }

    /// <summary>Rows of attention work (rows × splits) the scratch holds, and the most splits of one row.</summary>
    private const int SplitRows = 4096, MaxSplits = 32;

    /// <summary>_xb[r] = RMS-normalised _x[rows[r]] ⊙ weight for the first <paramref name="count"/> rows.</summary>
    private void Normalise(int count, ArrayView<int> rows, MemoryBuffer1D<float, Stride1D.Dense> weight, float epsilon)
    {
        int hidden = _config.HiddenSize;
        if (_rmsNorm is not null) _rmsNorm(count, _x.View, rows, weight.View, _xb.View, hidden, epsilon);
        else
            _rmsNormGroup!(new KernelConfig(count, Math.Min(IlgpuKernels.NormThreads, _accelerator.MaxNumThreadsPerGroup)), _x.View, rows, weight.View, _xb.View, hidden, epsilon, count);
    }

    /// <summary>output = input · mᵀ (+ bias; added to output when <paramref name="accumulate"/>) for <paramref name="tokens"/> rows.</summary>
    private void Multiply(Matrix m, MemoryBuffer1D<float, Stride1D.Dense> input, MemoryBuffer1D<float, Stride1D.Dense> output, int tokens, bool accumulate = false) =>
        Multiply(m, input, tokens, output, output, output, m.Rows, 0, accumulate);

    /// <summary>
    /// input · mᵀ (+ bias) with m's first <paramref name="rows0"/> rows into y0, the next <paramref name="rows1"/> into y1,
    /// the rest into y2: one launch.
    /// </summary>
    private void Multiply(Matrix m, MemoryBuffer1D<float, Stride1D.Dense> input, int tokens, MemoryBuffer1D<float, Stride1D.Dense> y0, MemoryBuffer1D<float, Stride1D.Dense> y1,
        MemoryBuffer1D<float, Stride1D.Dense> y2, int rows0, int rows1, bool accumulate = false)
    {
        var bias = (m.Bias ?? _none).View;
        int hasBias = m.Bias is null ? 0 : 1, add = accumulate ? 1 : 0, rows2 = m.Rows - rows0 - rows1;
        if (_matMul is not null)
            _matMul(new Index2D(m.Rows, tokens), m.Weights.View, input.View, bias, y0.View, y1.View, y2.View, m.Columns, rows0, rows1, rows2, hasBias, add);
        else if (tokens >= TiledFrom)
            _matMulTiled!(Tiles(m.Rows, tokens), m.Weights.View, input.View, bias, y0.View, y1.View, y2.View, m.Columns, rows0, rows1, rows2, tokens, hasBias, add);
        else
            _matMulWarp!(IlgpuKernels.WarpGroups(_accelerator, (long)m.Rows * tokens), m.Weights.View, input.View, bias, y0.View, y1.View, y2.View, m.Columns, rows0, rows1, rows2, tokens, hasBias, add);
    }

    /// <summary>
    /// _ffn = silu(x̂ · gateᵀ) ⊙ (x̂ · upᵀ) with x̂ the normalised residual: in a <paramref name="fused"/> step the product
    /// normalises _x itself; otherwise x̂ is _xb, normalised by a launch before (the CPU accelerator's thread per output, or
    /// tiles for many tokens).
    /// </summary>
    private void GateUp(Layer w, int tokens, float epsilon, bool fused)
    {
        int rows = w.Gate.Rows, columns = w.Gate.Columns;
        if (fused) _swiGluWarp!(IlgpuKernels.WarpGroups(_accelerator, (long)rows * tokens), w.Gate.Weights.View, w.Up.Weights.View, _x.View, _ffn.View, columns, rows, tokens, epsilon);
        else if (_swiGlu is not null) _swiGlu(new Index2D(rows, tokens), w.Gate.Weights.View, w.Up.Weights.View, _xb.View, _ffn.View, columns, rows);
        else
        {
            // Two tiled products: the gate's written, then the up product multiplied into silu of it.
            var none = _none.View;
            _matMulTiled!(Tiles(rows, tokens), w.Gate.Weights.View, _xb.View, none, _ffn.View, _ffn.View, _ffn.View, columns, rows, 0, 0, tokens, 0, 0);
            _matMulTiled!(Tiles(rows, tokens), w.Up.Weights.View, _xb.View, none, _ffn.View, _ffn.View, _ffn.View, columns, rows, 0, 0, tokens, 0, 2);
        }
    }

    /// <summary>Tokens from which a step's products are tiled (each weight read once per 64 tokens) rather than a warp per output.</summary>
    private const int TiledFrom = 16;

    /// <summary>The groups of <see cref="IlgpuKernels.MatMulTiled"/> for a rows × tokens product.</summary>
    private static KernelConfig Tiles(int rows, int tokens) => new((rows + 63) / 64 * ((tokens + 63) / 64), IlgpuKernels.TileThreads);

    /// <summary>The first <paramref name="rows"/> rows of the last step's logits into <paramref name="logits"/>.</summary>
    private void Download(int rows, Span<float> logits)
    {
        long count = (long)rows * _config.VocabSize;
        _logits.View.AsContiguous().SubView(0, count).CopyToCPU(logits[..(int)count]);
    }

    /// <summary>
    /// The weight tensors' rows one after another in one device matrix, and their biases likewise (zeros where one has
    /// none); each column scaled by <paramref name="norm"/>'s weight when one is given (the norm folded in).
    /// </summary>
    private Matrix Product(WeightTensor[] weights, WeightTensor[] biases, WeightTensor norm = default)
    {
        int columns = weights[0].Columns, rows = weights.Sum(w => w.Rows);
        var values = new float[(long)rows * columns];
        var bias = biases.Any(b => b.IsPresent) ? new float[rows] : null;
        int row = 0;
        for (int i = 0; i < weights.Length; i++)
        {
            weights[i].ReadRows(0, weights[i].Rows, values.AsSpan(row * columns, weights[i].Rows * columns));
            if (bias is not null && biases[i].IsPresent) biases[i].ReadRows(0, biases[i].Rows, bias.AsSpan(row, (int)biases[i].ElementCount));
            row += weights[i].Rows;
        }
        if (norm.IsPresent)
        {
            var g = new float[columns];
            norm.ReadRows(0, norm.Rows, g);
            for (long at = 0; at < values.LongLength; at += columns)
                System.Numerics.Tensors.TensorPrimitives.Multiply(values.AsSpan((int)at, columns), g, values.AsSpan((int)at, columns));
        }
        return new Matrix(Upload(values), bias is null ? null : Upload(bias), rows, columns);
    }

    private MemoryBuffer1D<float, Stride1D.Dense> Upload(in WeightTensor tensor)
    {
        var values = new float[tensor.ElementCount];
        tensor.ReadRows(0, tensor.Rows, values);
        return Upload(values);
    }

    private MemoryBuffer1D<float, Stride1D.Dense> Upload(float[] values)
    {
        var buffer = Floats(values.Length);
        buffer.View.CopyFromCPU(values);
        return buffer;
    }

    private MemoryBuffer1D<float, Stride1D.Dense> Floats(long count) => Own(_accelerator.Allocate1D<float>(Math.Max(1, count)));

    private MemoryBuffer1D<int, Stride1D.Dense> Ints(long count) => Own(_accelerator.Allocate1D<int>(Math.Max(1, count)));

    private T Own<T>(T buffer) where T : MemoryBuffer
    {
        _owned.Add(buffer);
        return buffer;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _accelerator.Bind();
        _stageTimeline?.Dispose();
        _blocks.Dispose();
        _int8Staging?.Dispose();
        foreach (var buffer in _owned) buffer.Dispose();
        _owned.Clear();
        OwnedDevice?.Dispose();
    }
}
