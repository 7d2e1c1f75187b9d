using System.Runtime.InteropServices;
using KvPacket.Compute.Cuda;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Sampling;
using KvPacket.Compute.Specialised;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;

namespace KvPacket.Engine.Cuda;

/// <summary>
/// The transformer forward pass on one GPU: weights, activations and the paged KV cache all in device memory; the
/// projections through cuBLAS (f32, or bf16 operands with f32 accumulation), everything else through the kernels of
/// <c>kernels.cu</c> compiled by NVRTC with the model card's constants (or the generic ones). Block-quantised matrices
/// (a GGUF's q4_0, q8_0, q4_K, q5_K and q6_K, in the layout the reader gives them) stay as stored: <c>quantised.cu</c>'s
/// products read the blocks for steps of a few tokens, multiply them on the tensor cores for steps of up to
/// <see cref="QuantisedTensorCoreTokens"/> (bf16 operands), and longer steps multiply through cuBLAS a slice at a time
/// dequantised into a scratch buffer. A step that chooses its tokens (<see cref="StepDraw"/>) returns only their ids to the host. Sequences by handle (<see cref="IForwardBackend"/>: packets built here and placed as
/// shared, query-realigned blocks, soft tokens), and a default one grown by <see cref="Prefill(ReadOnlySpan{int}, Span{float})"/>
/// and <see cref="DecodeGreedy"/> for the benchmarks.
/// </summary>
public sealed unsafe class CudaTransformer : IForwardBackend
{
    private const int Threads = 128;
    private const int BlockTokens = 16;

    private readonly CudaDevice _device;
    private readonly CudaModule _module;
    private readonly ModelConfig _config;
    private readonly DType _weightType;
    private readonly List<DeviceBuffer> _owned = [];
    private readonly Weight _embedding;
    private readonly Weight[] _classifier;
    private readonly DeviceBuffer _finalNorm;
    private readonly LayerOnDevice[] _layers;
    private readonly DeviceBuffer _x, _soft, _deviation, _qkv, _gateUp, _operand, _normed, _logits;
    private readonly DeviceBuffer _step, _argmax, _partialMl, _partialAcc, _splitCounters;
    private readonly CudaTokenDraws? _draws;   // null before sm_90
    private HostTokenDraws? _hostDraws;      // before sm_90
    private readonly int[] _stepHost;
    private readonly int _maxChunks;
    private readonly BlockTables _sequences = new();
    private readonly DeviceKvBlocks _blocks;
    private int _default;
    private readonly int _maxTokens, _maxContext, _maxEntries;
    private readonly int _interleaved;
    private readonly nint _kvRotateKeys, _kvDeviation, _kvDecodeInt8;
    private DeviceBuffer? _int8Staging;   // int8 blocks on their way into the cache (BeginImportInt8), twice the largest packet yet
    private readonly nint _embed, _rmsNorm, _kvAppend, _attentionDecode, _attentionPrefill, _swiglu, _addBias, _argmaxKernel, _gatherRows, _gemv, _gemvOneSwiglu;
    /// <summary>The tensor-core prefill attention (f16 KV, head dim a multiple of 16, at most 64 heads per KV head), or 0 where it does not apply.</summary>
    private readonly nint _attentionPrefillTensor, _attentionMerge;
    private readonly int _tensorTileTokens;
    private const int NormThreads = 1024;   // kernels.cu's NORM_THREADS: one block per row, the widest finishes a decode row soonest
    private const int SplitBudget = 4096;   // tokens × splits per step: bounds the partial buffers
    private const int PrefillTileThreshold = 16; // chunks at least this long use the tiled prefill kernel
    private const int TensorTileRows = 64;       // kernels.cu's FA_ROWS: query rows (tokens × heads of a group) per tensor-core block
    private readonly Dictionary<(int Tokens, int Splits, int PerSplit), CudaGraph> _graphs = new();
    /// <summary>kernels.cu's one-token products by the column count they are compiled for.</summary>
    private readonly Dictionary<int, nint> _gemvOne;
    /// <summary>quantised.cu's kernels by format (compiled after kernels.cu when a matrix stays block-quantised), and its dequantised slice.</summary>
    private readonly Dictionary<DType, QuantisedKernels> _quantised = [];
    private readonly DeviceBuffer? _dequantised;
    private readonly nint _swigluHalves;
    /// <summary>Elements of the scratch one slice of a quantised matrix is dequantised into for cuBLAS.</summary>
    private const long DequantisedElements = 16L << 20;
    /// <summary>Steps of at most this many tokens read quantised blocks directly (quantised.cu's QGEMV_TOKENS).</summary>
    private const int QuantisedGemvTokens = 8;

    /// <summary>A matrix on the device: F32 or BF16 (the operands' type), or block-quantised in an interleaved layout, as stored.</summary>
    private sealed record Weight(DeviceBuffer Buffer, int Rows, int Columns, DType Type)
    {
        public bool Quantised => Type.IsBlockQuantised();
    }

    /// <summary>quantised.cu's kernels for one format: products of up to 8 tokens and of one, of more on the tensor cores (bf16 operands; else 0), dequantised rows, embedding rows.</summary>
    private readonly record struct QuantisedKernels(nint Gemv, nint GemvOne, nint Gemm, nint Rows, nint Embed);
    /// <summary>quantised.cu's QMMA_ROWS, QMMA_TOKENS and QMMA_WARPS: a tensor-core block's rows, tokens and warps.</summary>
    private const int QuantisedTileRows = 32, QuantisedTileTokens = 32, QuantisedTileWarps = 8;
    /// <summary>Floats of the tensor-core products' split sums, and tiles whose splits can be counted.</summary>
    private const int QuantisedPartialFloats = 4 << 20, QuantisedCounters = 4096;
    /// <summary>The sums of the tensor-core products' column splits, and a zero per tile to count them.</summary>
    private readonly DeviceBuffer? _quantisedPartials, _quantisedCounters;

    /// <summary>
    /// One layer's weights, with q/k/v fused into one [q + 2·kv, hidden] product and gate/up into one [2·ffn, hidden]. A
    /// product is one matrix, or several that write consecutive rows of its output (quantised parts of different types);
    /// float gate/up rows are interleaved (2i, 2i + 1), quantised ones are gate's then up's.
    /// </summary>
    private sealed record LayerOnDevice(DeviceBuffer AttentionNorm, DeviceBuffer FfnNorm, Weight[] QueryKeyValue, Weight[] Output, Weight[] GateUp, Weight[] Down,
        DeviceBuffer? QueryKeyValueBias);

    /// <summary>
    /// Uploads <paramref name="model"/> to <paramref name="device"/> with float matrices as <paramref name="weightType"/> (F32 or
    /// BF16, also the products' operand type) and block-quantised ones as stored,
    /// for steps of up to <paramref name="maxTokens"/> tokens in up to <paramref name="maxSequences"/> sequences, and a
    /// KV cache of <paramref name="kvTokens"/> tokens in <paramref name="kvType"/> (F16 or F32), no sequence longer than
    /// <paramref name="maxContext"/> (the cache size, or the model's context, when 0).
    /// </summary>
    public CudaTransformer(Checkpoint model, CudaDevice device, DType weightType = DType.F32, DType kvType = DType.F16, int maxTokens = 512, int kvTokens = 4096,
        bool specialised = true, int maxSequences = 64, int maxContext = 0)
    {
        _maxChunks = Math.Min(maxSequences, maxTokens);
        if (weightType is not (DType.F32 or DType.BF16)) throw new ArgumentException($"GPU float weights and operands must be F32 or BF16 (block-quantised matrices stay as stored), not {weightType}.", nameof(weightType));
        if (kvType is not (DType.F32 or DType.F16)) throw new ArgumentException($"GPU KV must be F16 or F32, not {kvType}.", nameof(kvType));
        _device = device;
        Model = model;
        _config = model.Config;
        _weightType = weightType;
        _maxTokens = maxTokens;
        _maxContext = Math.Min(maxContext > 0 ? maxContext : kvTokens, _config.MaxContextLength);
        _interleaved = _config.RopeStyle == RopeStyle.Interleaved ? 1 : 0;
        var c = _config;

        Spec = specialised ? ModelSpec.For(c) : null;
        string source = Spec?.CudaSource ?? ModelSpec.GenericCudaSource(c, BlockTokens);
        bool quantised = model.Matrices.Any(StaysQuantised);
        if (quantised)
        {
            using var stream = System.Reflection.Assembly.GetAssembly(typeof(CudaDevice))!.GetManifestResourceStream("cuda/quantised.cu")!;
            source += "\n" + new StreamReader(stream).ReadToEnd();
        }
        if (kvType == DType.F32) source = "#define KV_F32\n" + source;
        if (weightType == DType.BF16) source = "#define OPERAND_BF16\n" + source;
        _module = device.LoadModule(source, Spec is null ? "generic" : Spec.Name.Replace('.', '_'));
        CompileSeconds = device.LastCompileSeconds;
        _module.DependentLaunches = true;
        _embed = _module.Function("embed");
        _kvRotateKeys = _module.Function("kv_rotate_keys");
        _kvDeviation = _module.Function("kv_deviation");
        _kvDecodeInt8 = _module.Function("kv_decode_int8");
        _rmsNorm = _module.Function("rms_norm");
        _kvAppend = _module.Function("kv_append");
        _attentionDecode = _module.Function("attention_decode");
        _attentionPrefill = _module.Function("attention_prefill");
        _swiglu = _module.Function("swiglu");
        _addBias = _module.Function("add_bias");
        _argmaxKernel = _module.Function("argmax");
        _gatherRows = _module.Function("gather_rows");
        _gemv = _module.Function("gemv");
        _gemvOne = new Dictionary<int, nint>
        {
            [c.HiddenSize] = _module.Function("gemv_one_hidden"),
            [c.QueryDim] = _module.Function("gemv_one_query"),
            [c.IntermediateSize] = _module.Function("gemv_one_ffn"),
        };
        if (c.HiddenSize * (weightType == DType.BF16 ? 2 : 4) % 16 == 0) _gemvOneSwiglu = _module.Function("gemv_one_swiglu");
        if (kvType == DType.F16 && c.HeadDim % 16 == 0 && c.GroupSize <= TensorTileRows)
        {
            _attentionPrefillTensor = _module.Function("attention_prefill_mma");
            _attentionMerge = _module.Function("attention_merge");
            _tensorTileTokens = TensorTileRows / c.GroupSize;
        }

        if (quantised)
        {
            foreach (var (type, name) in new[] { (DType.Q4_0x8, "q4_0x8"), (DType.Q8_0x8, "q8_0x8"), (DType.Q4_Kx8, "q4_kx8"), (DType.Q5_Kx8, "q5_kx8"), (DType.Q6_Kx8, "q6_kx8") })
                _quantised[type] = new QuantisedKernels(_module.Function("gemv_" + name), _module.Function("gemv1_" + name),
                    weightType == DType.BF16 ? _module.Function("gemm_" + name) : 0, _module.Function("rows_" + name), _module.Function("embed_" + name));
            _swigluHalves = _module.Function("swiglu_halves");
            _dequantised = Own(device.Allocate((weightType == DType.BF16 ? 2 : 4) * DequantisedElements));
            if (weightType == DType.BF16)
            {
                _quantisedPartials = Own(device.Allocate(4L * QuantisedPartialFloats));
                _quantisedCounters = Own(device.Allocate(4L * QuantisedCounters));
                device.Fill(_quantisedCounters, 0);
            }
        }
        _embedding = StaysQuantised(model.TokenEmbedding) ? UploadProduct([model.TokenEmbedding], weightType)[0] : Upload([model.TokenEmbedding], DType.F32);
        // Tied embeddings kept quantised are one matrix on the device too.
        _classifier = _embedding.Quantised && model.Classifier.Data == model.TokenEmbedding.Data ? [_embedding] : UploadProduct([model.Classifier], weightType);
        _finalNorm = UploadVector(model.FinalNorm)!;
        _layers = model.Layers.Select(l => new LayerOnDevice(UploadVector(l.AttentionNorm)!, UploadVector(l.FfnNorm)!,
            UploadProduct([l.Query, l.Key, l.Value], weightType), UploadProduct([l.Output], weightType), UploadProduct([l.Gate, l.Up], weightType, interleaveRows: true),
            UploadProduct([l.Down], weightType),
            l.QueryBias.IsPresent || l.KeyBias.IsPresent || l.ValueBias.IsPresent ? UploadBiases(l.QueryBias, l.KeyBias, l.ValueBias) : null)).ToArray();

        WeightBytesPerToken = _layers.Sum(l => new[] { l.QueryKeyValue, l.Output, l.GateUp, l.Down }.Sum(p => p.Sum(w => w.Buffer.Bytes)))
                              + _classifier.Sum(w => w.Buffer.Bytes) + _embedding.Buffer.Bytes / _embedding.Rows;
        int blockCount = (kvTokens + BlockTokens - 1) / BlockTokens;
        _blocks = new DeviceKvBlocks(device, KvCacheLayout.For(c, kvType, BlockTokens), blockCount);
        int t = maxTokens;
        _x = Own(device.Allocate(4L * t * c.HiddenSize));
        _soft = Own(device.Allocate(4L * t * c.HiddenSize));
        _deviation = Own(device.Allocate(4L * t));
        _qkv = Own(device.Allocate(4L * t * (c.QueryDim + 2 * c.KvDim)));
        _gateUp = Own(device.Allocate(4L * t * Math.Max(2 * c.IntermediateSize, c.HiddenSize)));
        _operand = Own(device.Allocate((weightType == DType.BF16 ? 2L : 4L) * t * Math.Max(Math.Max(c.HiddenSize, c.QueryDim), c.IntermediateSize)));
        _normed = Own(device.Allocate((weightType == DType.BF16 ? 2L : 4L) * c.HiddenSize));
        _logits = Own(device.Allocate(4L * _maxChunks * c.VocabSize));
        // One upload per step: ids, positions, blocks, slots, chunk of each token (t each); each chunk's table start,
        // table length and the rows that get logits; then every chunk's table entries (each sequence's own blocks plus
        // the packets it places, which may be shared by several chunks of one step).
        _maxEntries = blockCount + _maxChunks * (_maxContext / BlockTokens + 64);
        _stepHost = new int[5 * t + 3 * _maxChunks + 5 * _maxEntries];
        _step = Own(device.Allocate(4L * _stepHost.Length));
        _argmax = Own(device.Allocate(4L * _maxChunks));
        _draws = device.Architecture >= CudaTokenDraws.MinimumArchitecture ? new CudaTokenDraws(device, _maxChunks) : null;
        _default = CreateSequence();
        long partialRows = (long)Math.Max(t, SplitBudget) * c.HeadCount;
        _partialMl = Own(device.Allocate(8L * partialRows));
        _partialAcc = Own(device.Allocate(4L * partialRows * c.HeadDim));
        _splitCounters = Own(device.Allocate(4L * t * c.KvHeadCount));
        device.Fill(_splitCounters, 0);
        device.Synchronize();
    }

    /// <summary>The model card spec whose CUDA source is running, or null for the generic source.</summary>
    public ModelSpec? Spec { get; }

    /// <summary>Warps the products over quantised blocks aim to have in flight (a row group takes 1–8 of them); setting it drops the captured decode graphs.</summary>
    public int QuantisedWarps
    {
        get => _quantisedWarps;
        set
        {
            _quantisedWarps = value;
            ClearGraphs();
        }
    }
    private int _quantisedWarps = 8192;

    /// <summary>
    /// Steps of more than 8 tokens and at most this many multiply bf16 operands by quantised blocks on the tensor cores,
    /// each block decoded once per 32 tokens; longer steps (and f32 operands) dequantise slices of the matrix for cuBLAS.
    /// 0 sends every longer step to cuBLAS. Setting it drops the captured decode graphs.
    /// </summary>
    public int QuantisedTensorCoreTokens
    {
        get => _quantisedTensorCoreTokens;
        set
        {
            _quantisedTensorCoreTokens = value;
            ClearGraphs();
        }
    }
    private int _quantisedTensorCoreTokens = 128;

    /// <summary>Whether some of the model's matrices stay block-quantised on the device (quantised.cu's products read them).</summary>
    public bool KeepsQuantisedWeights => _quantised.Count > 0;

    /// <summary>Bytes of weights a decode step reads: every layer's matrices and the classifier as held on the device, and one embedding row.</summary>
    public long WeightBytesPerToken { get; }

    /// <summary>Seconds NVRTC took to compile the kernels (0 when they came from the on-disk cache).</summary>
    public double CompileSeconds { get; }

    /// <summary>Tokens in the default sequence (the one <see cref="Prefill(ReadOnlySpan{int}, Span{float})"/> and <see cref="DecodeGreedy"/> grow).</summary>
    public int Length => _sequences[_default].Length;

    /// <inheritdoc />
    public int CreateSequence() => _sequences.Create();

    /// <inheritdoc />
    public void ReleaseSequence(int id)
    {
        _sequences[id].Release(_blocks);
        _sequences.Remove(id);
    }

    /// <inheritdoc />
    public KvBlocks KvBlocks => _blocks;

    /// <inheritdoc />
    public Checkpoint Model { get; }

    /// <inheritdoc />
    public Packet ImportPacket(Packet packet)
    {
        try { return BeginImport(packet); }
        finally { WaitForImports(); }
    }

    /// <inheritdoc />
    /// <remarks>From page-locked staging every block's copy is queued by DMA on the stream the steps run on, so later steps
    /// see the packet and the next packet's store reads overlap the copy; from pageable memory the copy is done on return.</remarks>
    public Packet BeginImport(Packet packet)
    {
        if (ReferenceEquals(packet.Pool, _blocks)) return packet.Share();
        var host = packet.Pool as KvBlockPool ?? throw new ArgumentException("The packet lives in another GPU's cache.", nameof(packet));
        long bytes = _blocks.Layout.BlockBytes;
        if (!host.IsPageLocked) return packet.CopyTo(_blocks, (from, to) => _device.Upload<byte>(host.BlockBytes(from), _blocks.Memory, to * bytes));
        try
        {
            return packet.CopyTo(_blocks, (from, to) =>
            {
                fixed (byte* source = host.BlockBytes(from)) _device.UploadPageLocked((nint)source, _blocks.Memory, to * bytes, bytes);
            });
        }
        catch
        {
            WaitForImports();   // the blocks a failed copy gave back must not be written after someone else takes them
            throw;
        }
    }

    /// <inheritdoc />
    public bool DecodesInt8Blocks => true;

    /// <inheritdoc />
    /// <remarks>
    /// Each host block's int8 bytes, with the id of the cache block they become written after them, are copied into a
    /// device staging slot (by DMA from page-locked staging), and one kernel decodes the packet's slots into the cache —
    /// all queued on the steps' stream, so the next import's copies into the same slots wait for this decode.
    /// </remarks>
    public Packet BeginImportInt8(Packet packet)
    {
        var host = packet.Pool as KvBlockPool ?? throw new ArgumentException("The packet lives in another GPU's cache.", nameof(packet));
        var layout = _blocks.Layout;
        long slot = (Int8KvBlock.StagedBytes(layout) + 15) / 16 * 16;   // 16-byte aligned slots
        int count = packet.Blocks.Count;
        if (_int8Staging is null || _int8Staging.Bytes < count * slot)
        {
            _device.Synchronize();   // a smaller staging may still be read by a queued decode
            _int8Staging?.Dispose();
            _int8Staging = _device.Allocate(2L * count * slot);
        }
        var staging = _int8Staging;
        int next = 0;
        Packet imported;
        try
        {
            imported = packet.CopyTo(_blocks, (from, to) =>
            {
                var staged = Int8KvBlock.Stage(host.BlockBytes(from), layout, to);
                fixed (byte* source = staged)
                {
                    if (host.IsPageLocked) _device.UploadPageLocked((nint)source, staging, next * slot, staged.Length);
                    else _device.Upload(staged, staging, next * slot);
                }
                next++;
            });
        }
        catch
        {
            WaitForImports();
            throw;
        }
        ulong staged = staging.Pointer, pool = _blocks.Memory.Pointer;
        long slotBytes = slot;
        _module.Launch(_kvDecodeInt8, ((uint)count, (uint)(2 * _config.LayerCount)), 256, (nint)(&staged), (nint)(&slotBytes), (nint)(&pool));
        return imported;
    }

    /// <inheritdoc />
    public void WaitForImports() => _device.Synchronize();

    /// <summary>
    /// Staging in page-locked host memory: the store reads a packet's pages straight into it and they reach the GPU by
    /// DMA, several times a pageable copy's speed. Up to <see cref="MaxPageLockedStagingBytes"/> (a serving engine pins
    /// host memory for KV the way vLLM's swap space does); a larger pool is pageable rather than pin more.
    /// </summary>
    public KvBlockPool CreateStagingPool(int blockCount)
    {
        long bytes = _blocks.Layout.BlockBytes * (long)blockCount;
        if (bytes > MaxPageLockedStagingBytes) return new KvBlockPool(_blocks.Layout, blockCount);
        var device = _device;
        return new KvBlockPool(_blocks.Layout, blockCount, device.AllocateHost(bytes), device.FreeHost, pageLocked: true);
    }

    /// <summary>The most page-locked host memory <see cref="CreateStagingPool"/> takes.</summary>
    public const long MaxPageLockedStagingBytes = 8L << 30;

    /// <inheritdoc />
    public Packet ExportPacket(Packet packet, KvBlockPool host)
    {
        if (!ReferenceEquals(packet.Pool, _blocks)) throw new ArgumentException("The packet is not in this GPU's cache.", nameof(packet));
        long bytes = _blocks.Layout.BlockBytes;
        return packet.CopyTo(host, (from, to) => _device.Download<byte>(_blocks.Memory, host.BlockBytes(to), from * bytes));
    }

    /// <inheritdoc />
    public int MaxSequenceLength => _maxContext;

    /// <inheritdoc />
    public void Prefill(int sequence, ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken)
    {
        int vocab = _config.VocabSize;
        if (which == LogitsFor.AllTokens)
        {
            // Every row's logits: steps of at most as many tokens as the logits buffer has rows.
            for (int offset = 0; offset < tokens.Length; offset += _maxChunks)
            {
                int n = Math.Min(_maxChunks, tokens.Length - offset);
                Step(sequence, tokens.Slice(offset, n), default, allRows: true);
                _device.Download(_logits, logits.Slice(offset * vocab, n * vocab));
            }
            return;
        }
        for (int offset = 0; offset < tokens.Length; offset += _maxTokens)
            Step(sequence, tokens.Slice(offset, Math.Min(_maxTokens, tokens.Length - offset)), default, allRows: false);
        if (!logits.IsEmpty && !tokens.IsEmpty) _device.Download(_logits, logits[..vocab]);
    }

    /// <inheritdoc />
    public void PrefillSoft(int sequence, ReadOnlySpan<float> embeddings, Span<float> logits)
    {
        int hidden = _config.HiddenSize;
        if (embeddings.Length % hidden != 0) throw new ArgumentException($"Soft tokens are rows of {hidden} floats; got {embeddings.Length}.", nameof(embeddings));
        Span<int> ids = stackalloc int[Math.Min(_maxTokens, embeddings.Length / hidden)];
        for (int i = 0; i < ids.Length; i++) ids[i] = -1 - i;   // kernels.cu's embed: a negative id is soft row −1 − id
        for (int offset = 0; offset < embeddings.Length; offset += _maxTokens * hidden)
        {
            int n = Math.Min(_maxTokens, (embeddings.Length - offset) / hidden);
            Step(sequence, ids[..n], embeddings.Slice(offset, n * hidden), allRows: false);
        }
        if (!logits.IsEmpty && !embeddings.IsEmpty) _device.Download(_logits, logits[.._config.VocabSize]);
    }

    /// <inheritdoc />
    public Packet BuildPacket(ReadOnlySpan<int> tokens, ReadOnlySpan<float> header = default, ReadOnlySpan<float> trailer = default, double keep = 1.0) =>
        keep != 1.0 ? throw new NotSupportedException("Token-pruned packets are built by the CPU backend only; the CUDA backend builds whole packets.")
            : _sequences.BuildPacket(this, tokens, header, trailer);

    /// <inheritdoc />
    public void AppendPacket(int sequence, Packet packet, int skip = 0, int keyOrigin = -1) => _sequences[sequence].Place(packet, skip, _blocks, _maxContext, keyOrigin);

    /// <inheritdoc />
    public void PlacePacketCopy(int sequence, Packet packet)
    {
        var target = _sequences[sequence];
        if (!ReferenceEquals(packet.Pool, _blocks)) throw new ArgumentException("The packet lives in another model's KV cache (or on another backend).", nameof(packet));
        if (packet.IsPruned) throw new ArgumentException("CacheBlend recomputes a document's tokens in place and needs every one of them: this packet is token-pruned.", nameof(packet));
        if (target.Length + packet.Length > _maxContext)
            throw new ArgumentOutOfRangeException(nameof(packet), $"Placing a {packet.Length}-token packet at offset {target.Length} exceeds the context of {_maxContext}.");
        // Private copies of the packet's blocks (block ids staged in the step buffer), their keys rotated on to the global positions.
        var copies = _stepHost.AsSpan(0, packet.Blocks.Count);
        long bytes = _blocks.Layout.BlockBytes;
        _blocks.Allocate(copies);
        for (int b = 0; b < copies.Length; b++) _device.Copy(_blocks.Memory.At(packet.Blocks[b] * bytes), _blocks.Memory.At(copies[b] * bytes), bytes);
        _device.Upload<int>(copies, _step);
        ulong pool = _blocks.Memory.Pointer, blocks = _step.Pointer;
        int offset = target.Length, interleaved = _interleaved;
        _module.Launch(_kvRotateKeys, ((uint)copies.Length, (uint)_config.LayerCount), 256, (nint)(&pool), (nint)(&blocks), (nint)(&offset), (nint)(&interleaved));
        for (int b = 0; b < copies.Length; b++)
            target.Add(new BlockEntry(copies[b], offset + b * BlockTokens, Math.Min(BlockTokens, packet.Length - b * BlockTokens), 0, 0), owned: true);
        target.Length += packet.Length;
        target.TailOwned = false;
    }

    /// <inheritdoc />
    public int BlendRecompute(int sequence, ReadOnlySpan<int> tokens, int firstPosition, double fraction)
    {
        if (!(fraction is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "The recompute fraction must be in [0, 1].");
        var c = _config;
        var target = _sequences[sequence];
        int recomputed = 0;
        var deviation = new float[Math.Min(_maxTokens, tokens.Length)];
        for (int offset = 0; offset < tokens.Length; offset += _maxTokens)
        {
            int n = Math.Min(_maxTokens, tokens.Length - offset);
            // Layer 0 for every token, in context (consecutive positions: a tiled kernel where one applies), its K and V
            // written over the copy's slots.
            var host = _stepHost.AsSpan();
            for (int i = 0; i < n; i++)
            {
                int token = tokens[offset + i], position = firstPosition + offset + i;
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} is outside the vocabulary of {c.VocabSize}.");
                host[i] = token;
                host[n + i] = position;
                (host[2 * n + i], host[3 * n + i]) = Locate(target, position);
                host[4 * n + i] = 0;
            }
            int tableCount = UploadBlendStep(target, n);
            var (splits, perSplit) = DecodeSplits(n, tableCount);
            Enqueue(n, 1, 0, splits, perSplit, Tiled(n, tableCount), firstPosition + offset, tableCount, fromLayer: 0, toLayer: 1);
            if (c.LayerCount == 1) continue;

            // Layer 1's K and V from the layer-0 output, against the stored ones: the fraction that deviates most goes on.
            Deviations(n, deviation);
            int keep = (int)Math.Ceiling(fraction * n);
            int[] selected = [.. Enumerable.Range(0, n).OrderByDescending(t => deviation[t]).ThenBy(t => t).Take(keep).Order()];
            if (selected.Length == 0) continue;
            // The selected rows of the residual stream moved to the front, their metadata with them.
            for (int j = 0; j < selected.Length; j++)
            {
                host[n + j] = host[n + selected[j]];
                host[2 * n + j] = host[2 * n + selected[j]];
                host[3 * n + j] = host[3 * n + selected[j]];
                host[5 * n + j] = selected[j];
            }
            _device.Upload<int>(host.Slice(5 * n, selected.Length), _step);
            ulong x = _x.Pointer, rows = _step.Pointer, gathered = _gateUp.Pointer;
            int hidden = c.HiddenSize, k = selected.Length;
            _module.Launch(_gatherRows, ((uint)k, 1), Threads, (nint)(&x), (nint)(&rows), (nint)(&gathered), (nint)(&hidden));
            _device.Copy(_gateUp.Pointer, _x.Pointer, 4L * k * hidden);
            for (int j = 0; j < k; j++) host[k + j] = host[n + j];               // positions
            for (int j = 0; j < k; j++) host[2 * k + j] = host[2 * n + j];       // blocks
            for (int j = 0; j < k; j++) host[3 * k + j] = host[3 * n + j];       // slots
            for (int j = 0; j < k; j++) host[4 * k + j] = 0;                     // chunk
            tableCount = UploadBlendStep(target, k);
            (splits, perSplit) = DecodeSplits(k, tableCount);
            // Scattered positions: the tensor-core tiles and the split kernel take a position per token, the scalar tiles do not.
            bool tensorTiles = _attentionPrefillTensor != 0 && UseTensorCores && k >= PrefillTileThreshold;
            Enqueue(k, 1, 0, splits, perSplit, tensorTiles, firstPosition + offset, tableCount, fromLayer: 1, scattered: true);
            recomputed += k;
        }
        _device.Synchronize();
        return recomputed;
    }

    /// <summary>
    /// Uploads a blend step's metadata — the first 5 × <paramref name="n"/> ints of the step buffer already hold ids,
    /// positions, blocks, slots and chunks — with the sequence's table as its one chunk; returns the table's length.
    /// </summary>
    private int UploadBlendStep(BlockTable target, int n)
    {
        var host = _stepHost.AsSpan();
        host[5 * n] = 0;
        host[5 * n + 1] = target.Entries.Count;
        MemoryMarshal.Cast<BlockEntry, int>(CollectionsMarshal.AsSpan(target.Entries)).CopyTo(host[(5 * n + 2)..]);
        _device.Upload<int>(host[..(5 * n + 2 + 5 * target.Entries.Count)], _step);
        return target.Entries.Count;
    }

    /// <summary>Each of the step's <paramref name="n"/> tokens' distance between its recomputed layer-1 K/V and the stored ones.</summary>
    private void Deviations(int n, Span<float> deviation)
    {
        var c = _config;
        var w = _layers[1];
        ulong x = _x.Pointer, norm = w.AttentionNorm.Pointer, operand = _operand.Pointer;
        float epsilon = (float)c.NormEpsilon;
        _module.Launch(_rmsNorm, ((uint)n, 1), NormThreads, (nint)(&x), (nint)(&norm), (nint)(&operand), (nint)(&epsilon));
        Project(n, w.QueryKeyValue, _qkv, w.QueryKeyValueBias);
        ulong qkv = _qkv.Pointer, pool = _blocks.Memory.Pointer, blocks = _step.At(8L * n), slots = _step.At(12L * n), positions = _step.At(4L * n), result = _deviation.Pointer;
        int layer = 1, interleaved = _interleaved;
        _module.Launch(_kvDeviation, ((uint)n, 1), 256, (nint)(&qkv), (nint)(&pool), (nint)(&layer), (nint)(&blocks), (nint)(&slots), (nint)(&positions),
            (nint)(&interleaved), (nint)(&result));
        _device.Download(_deviation, deviation[..n]);
    }

    /// <summary>The block and slot holding <paramref name="position"/>, which must lie in a block only this sequence holds (a CacheBlend copy).</summary>
    private (int Block, int Slot) Locate(BlockTable sequence, int position)
    {
        foreach (var e in sequence.Entries)
        {
            if (position < e.FirstPosition || position >= e.FirstPosition + e.Count) continue;
            if (e.Rotation != 0 || _blocks.ReferenceCount(e.Block) != 1)
                throw new InvalidOperationException($"Position {position} lies in a shared packet block and cannot be recomputed in place.");
            return (e.Block, e.FirstSlot + position - e.FirstPosition);
        }
        throw new ArgumentOutOfRangeException(nameof(position), $"Position {position} is not in this sequence (length {sequence.Length}).");
    }

    /// <summary>Whether disposing this also disposes the GPU it runs on (true when it was opened for this model alone).</summary>
    public bool OwnsDevice { get; init; }

    /// <summary>Prefill attention on the tensor cores where the kernel exists (f16 KV, head dim a multiple of 16); on by default.</summary>
    public bool UseTensorCores { get; set; } = true;

    /// <summary>When set, steps run eagerly and mark each stage (norm, products, attention, …) on this timeline for profiling.</summary>
    public CudaTimeline? Timeline { get; set; }
    private CudaTimeline? _stageTimeline;   // made by TimeStages

    /// <summary>
    /// Decode attention blocks to aim for per step (default 2048): each sequence's block table is cut into splits so
    /// that tokens × KV heads × splits comes near this — every SM busy, and several entries per block when many tokens
    /// share a step.
    /// </summary>
    public int DecodeAttentionBlocks { get; set; } = 2048;

    /// <summary>Replay decode steps from captured CUDA graphs (on by default).</summary>
    public bool UseGraphs { get; set; } = true;

    /// <summary>
    /// Launch each kernel as a programmatic dependent of the previous one (sm_90+, on by default): it starts while the
    /// previous one drains, and reads what does not depend on it (norm weights, KV rows of earlier steps) before waiting.
    /// </summary>
    public bool UseDependentLaunches
    {
        get => _module.DependentLaunches;
        set
        {
            if (value != _module.DependentLaunches) ClearGraphs();
            _module.DependentLaunches = value;
        }
    }

    /// <summary>The device buffer holding the last token's logits.</summary>
    public DeviceBuffer LogitsBuffer => _logits;

    /// <summary>Device memory held, in bytes.</summary>
    public long DeviceBytes => _owned.Sum(b => b.Bytes) + _blocks.Memory.Bytes;

    /// <inheritdoc />
    public ModelConfig Config => _config;

    /// <inheritdoc />
    public int SequenceLength(int sequence) => _sequences[sequence].Length;

    /// <inheritdoc />
    public int MaxStepTokens => _maxTokens;

    /// <inheritdoc />
    public int MaxStepSequences => _maxChunks;

    /// <inheritdoc />
    public void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, Span<float> logits)
    {
        Step(sequences, lengths, tokens, soft, allRows: false);
        _device.Download(_logits, logits[..(sequences.Length * _config.VocabSize)]);
    }

    /// <inheritdoc />
    public void StepDraw(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, ReadOnlySpan<TokenDraw> draws,
        Span<int> next)
    {
        Step(sequences, lengths, tokens, soft, allRows: false);
        if (TokenDraw.AllGreedy(draws[..sequences.Length])) NextToken(next[..sequences.Length]);   // the argmax kernel is one pass, launched as a dependent of the step
        else if (_draws is not null) _draws.Choose(_logits, _config.VocabSize, draws[..sequences.Length], next);
        else
        {
            // Before sm_90 (no thread-block clusters) the logits come to the host and the same rule draws there.
            _hostDraws ??= new HostTokenDraws(_maxChunks, _config.VocabSize);
            _device.Download(_logits, _hostDraws.Logits(sequences.Length));
            _hostDraws.Choose(draws[..sequences.Length], next);
        }
    }

    /// <inheritdoc />
    public bool TimeStages(bool on)
    {
        if (on) Timeline = _stageTimeline ??= new CudaTimeline(_device);
        else if (Timeline == _stageTimeline) Timeline = null;
        return true;
    }

    /// <inheritdoc />
    public IReadOnlyDictionary<string, double> TakeStageTimes() =>
        Timeline is { } timeline ? timeline.Totals() : System.Collections.Frozen.FrozenDictionary<string, double>.Empty;

    /// <inheritdoc />
    public int BlocksNeededFor(int sequence, int tokens) => _sequences[sequence].BlocksNeededFor(tokens, BlockTokens);

    /// <inheritdoc />
    public int SharePrefix(int sequence, int source, int upTo) => _sequences[sequence].ShareFrom(_sequences[source], upTo, _blocks);


    /// <summary>Empties the default sequence (its KV blocks are reused).</summary>
    public void Reset()
    {
        ReleaseSequence(_default);
        _default = CreateSequence();
    }

    /// <summary>Appends <paramref name="tokens"/> to the default sequence and writes the last token's logits into <paramref name="logits"/> (vocab floats) when given.</summary>
    public void Prefill(ReadOnlySpan<int> tokens, Span<float> logits = default) => Prefill(_default, tokens, logits);

    /// <summary>Greedy decoding: appends the argmax of the last logits, <paramref name="count"/> times; returns the tokens.</summary>
    public int[] DecodeGreedy(int count)
    {
        var tokens = new int[count];
        Span<int> next = stackalloc int[1];
        for (int i = 0; i < count; i++)
        {
            NextToken(next);
            tokens[i] = next[0];
            if (i + 1 < count) Step(next);
        }
        return tokens;
    }

    /// <summary>The argmax of the last step's logits, one per chunk, computed on the device.</summary>
    public void NextToken(Span<int> tokens)
    {
        ulong logits = _logits.Pointer, result = _argmax.Pointer;
        int vocab = _config.VocabSize;
        _module.Launch(_argmaxKernel, ((uint)tokens.Length, 1), 1024, (nint)(&logits), (nint)(&vocab), (nint)(&result));
        _device.Download(_argmax, tokens);
    }

    /// <summary>One step of the default sequence: appends <paramref name="tokens"/>.</summary>
    public void Step(ReadOnlySpan<int> tokens)
    {
        Span<int> sequence = [_default];
        Span<int> length = [tokens.Length];
        Step(sequence, length, tokens);
    }

    /// <summary>
    /// One forward step over a ragged batch: chunk i appends <paramref name="lengths"/>[i] tokens (taken in order from
    /// <paramref name="tokens"/>) to sequence <paramref name="sequences"/>[i]. Each chunk's last-token logits stay on the
    /// device, row i of <see cref="LogitsBuffer"/>.
    /// </summary>
    public void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens) => Step(sequences, lengths, tokens, default, allRows: false);

    /// <summary>One chunk: <paramref name="tokens"/> (negative ids: rows of <paramref name="soft"/>) appended to <paramref name="sequence"/>.</summary>
    private void Step(int sequence, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, bool allRows)
    {
        Span<int> sequences = [sequence];
        Span<int> lengths = [tokens.Length];
        Step(sequences, lengths, tokens, soft, allRows);
    }

    /// <summary>
    /// The step itself. A negative token id −1 − r takes row r of <paramref name="soft"/> ([rows, hidden]) as its input
    /// embedding. With <paramref name="allRows"/> (one chunk of at most as many tokens as the logits buffer has rows) every
    /// token's logits are computed, else each chunk's last token's.
    /// </summary>
    private void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, bool allRows)
    {
        var c = _config;
        int n = tokens.Length, chunks = sequences.Length;
        if (allRows && (chunks != 1 || n > _maxChunks)) throw new ArgumentOutOfRangeException(nameof(tokens), $"Every row's logits: one chunk of at most {_maxChunks} tokens.");
        int rows = allRows ? n : chunks, softRows = soft.Length / c.HiddenSize;
        foreach (int token in tokens)
            if (token >= c.VocabSize || token < -softRows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} is outside the vocabulary of {c.VocabSize}.");
        if (n > _maxTokens || chunks > _maxChunks) throw new ArgumentOutOfRangeException(nameof(tokens), $"A step takes at most {_maxTokens} tokens in {_maxChunks} sequences.");
        var host = _stepHost.AsSpan();
        tokens.CopyTo(host);
        Span<int> positions = host.Slice(n, n), blocks = host.Slice(2 * n, n), slots = host.Slice(3 * n, n), tokenChunk = host.Slice(4 * n, n);
        Span<int> tableStart = host.Slice(5 * n, chunks), tableLength = host.Slice(5 * n + chunks, chunks), logitRows = host.Slice(5 * n + 2 * chunks, rows);
        var entryInts = host[(5 * n + 2 * chunks + rows)..];
        int offset = 0, entryCount = 0, longest = 0;
        for (int chunk = 0; chunk < chunks; chunk++)
        {
            var sequence = _sequences[sequences[chunk]];
            int length = lengths[chunk];
            if (sequence.Length + length > _maxContext) throw new ArgumentOutOfRangeException(nameof(tokens), $"Sequence {sequences[chunk]} would exceed {_maxContext} tokens.");
            for (int t = 0; t < length; t++)
            {
                int position = sequence.Length + t;
                (blocks[offset + t], slots[offset + t]) = sequence.Claim(position, _blocks);
                positions[offset + t] = position;
                tokenChunk[offset + t] = chunk;
                if (allRows) logitRows[t] = t;
            }
            if (entryCount + sequence.Entries.Count > _maxEntries)
                throw new InvalidOperationException($"A step's block tables hold at most {_maxEntries} entries; this one needs more (many packets in many sequences).");
            var table = MemoryMarshal.Cast<BlockEntry, int>(CollectionsMarshal.AsSpan(sequence.Entries));
            table.CopyTo(entryInts[(5 * entryCount)..]);
            tableStart[chunk] = entryCount;
            tableLength[chunk] = sequence.Entries.Count;
            if (!allRows) logitRows[chunk] = offset + length - 1;
            entryCount += sequence.Entries.Count;
            longest = Math.Max(longest, sequence.Entries.Count);
            offset += length;
        }
        if (offset != n) throw new ArgumentException($"The chunk lengths add up to {offset}, not {n} tokens.", nameof(lengths));
        _device.Upload<int>(host[..(5 * n + 2 * chunks + rows + 5 * entryCount)], _step);
        if (!soft.IsEmpty) _device.Upload(soft, _soft);
        var (splits, perSplit) = DecodeSplits(n, longest);
        bool tiled = chunks == 1 && Tiled(n, longest);
        int firstPosition = positions[0], tableCount = tableLength[0];

        bool decode = !tiled && n == chunks;
        if (decode && UseGraphs && Timeline is null)
        {
            // Decode steps of one shape replay one captured graph: ~200 launches become one. Metadata lives in device
            // buffers at fixed addresses, so only the shape (tokens, splits) selects the graph.
            var key = (n, splits, perSplit);
            if (!_graphs.TryGetValue(key, out var graph))
                _graphs[key] = graph = _device.Capture(() => Enqueue(n, chunks, rows, splits, perSplit, tiled, firstPosition, tableCount));
            _device.Replay(graph);
        }
        else Enqueue(n, chunks, rows, splits, perSplit, tiled, firstPosition, tableCount);
        for (int chunk = 0; chunk < chunks; chunk++) _sequences[sequences[chunk]].Length += lengths[chunk];
    }

    /// <summary>
    /// Whether one chunk of <paramref name="tokens"/> consecutive positions over a table of <paramref name="entries"/>
    /// takes a tiled prefill kernel (else the split one, as decode and mixed steps do). The tensor-core tiles divide a
    /// long context among blocks themselves (PrefillSplits); the scalar tiles cannot, so a chunk whose scalar tiles are too
    /// few to fill the GPU over a context much longer than itself (a query after its packets) takes the split kernel
    /// instead of a handful of blocks each walking the whole context.
    /// </summary>
    private bool Tiled(int tokens, int entries)
    {
        if (tokens < PrefillTileThreshold) return false;
        if (_attentionPrefillTensor != 0 && UseTensorCores) return true;
        int scalarTileBlocks = (tokens + QueryTile - 1) / QueryTile * _config.KvHeadCount;
        return scalarTileBlocks >= _device.Multiprocessors || entries * BlockTokens <= 4 * tokens;
    }

    /// <summary>
    /// Splits of each token's block table for the split attention kernel, and entries per split: at least two entries
    /// a split (one-entry splits cost more in blocks and merging than they gain in parallelism: a batch-1 decode step at
    /// a 4,096-token context took 1.13 ms with 256 one-entry splits, 1.03 with 128 of two, on the H200).
    /// </summary>
    private (int Splits, int PerSplit) DecodeSplits(int tokens, int longest)
    {
        int heads = tokens * _config.KvHeadCount;
        int splits = Math.Clamp((DecodeAttentionBlocks + heads - 1) / heads, 1, Math.Max(1, Math.Min((longest + 1) / 2, SplitBudget / tokens)));
        return (splits, (longest + splits - 1) / splits);
    }

    /// <summary>
    /// Queues one step's kernels and products (its metadata already uploaded) on the stream: layers
    /// [<paramref name="fromLayer"/>, <paramref name="toLayer"/>) (all by default; the embedding only from layer 0), then
    /// the logits of <paramref name="rows"/> rows (none: no classifier). <paramref name="scattered"/>: the tokens' positions
    /// are not consecutive (the tensor-core tiles read each one).
    /// </summary>
    private void Enqueue(int n, int chunks, int rows, int splits, int perSplit, bool tiled, int firstPosition, int tableCount, int fromLayer = 0, int toLayer = -1,
        bool scattered = false)
    {
        var c = _config;
        uint queryTile = (uint)QueryTile;
        ulong ids = _step.Pointer, positionsPointer = _step.At(4L * n), blocksPointer = _step.At(8L * n), slotsPointer = _step.At(12L * n),
            sequencePointer = _step.At(16L * n), startPointer = _step.At(20L * n), lengthPointer = _step.At(20L * n + 4L * chunks),
            rowsPointer = _step.At(20L * n + 8L * chunks), entries = _step.At(20L * n + 8L * chunks + 4L * rows);
        var m = _module;
        ulong x = _x.Pointer, operand = _operand.Pointer, embedding = _embedding.Buffer.Pointer, soft = _soft.Pointer;
        var timeline = Timeline;
        if (fromLayer == 0)
        {
            timeline?.Mark("embed");
            if (_embedding.Quantised)
            {
                int columns = _embedding.Columns;
                m.Launch(_quantised[_embedding.Type].Embed, ((uint)n, 1), Threads, (nint)(&embedding), (nint)(&columns), (nint)(&ids), (nint)(&soft), (nint)(&x));
            }
            else m.Launch(_embed, ((uint)n, 1), Threads, (nint)(&embedding), (nint)(&ids), (nint)(&soft), (nint)(&x));
        }
        float epsilon = (float)c.NormEpsilon, scale = 1f / MathF.Sqrt(c.HeadDim);
        int hidden = c.HiddenSize, ffn = c.IntermediateSize;
        // A pure decode step (one token per sequence) has attention append each token's K and V itself.
        bool append = !tiled && n == chunks;
        int appendFlag = append ? 1 : 0;
        for (int layer = fromLayer; layer < (toLayer < 0 ? _layers.Length : toLayer); layer++)
        {
            // Per layer: norm → one q/k/v product → K (rotated) and V into the cache (inside attention in a pure decode
            // step) → attention → output product added to the residual → norm → one gate/up product → SwiGLU (inside
            // the product for one token) → down product added to the residual. The norms, SwiGLU and attention write
            // the products' operands directly (bf16 for bf16 weights).
            var w = _layers[layer];
            ulong norm = w.AttentionNorm.Pointer;
            timeline?.Mark("rms_norm");
            m.Launch(_rmsNorm, ((uint)n, 1), NormThreads, (nint)(&x), (nint)(&norm), (nint)(&operand), (nint)(&epsilon));
            timeline?.Mark("qkv product");
            Project(n, w.QueryKeyValue, _qkv, w.QueryKeyValueBias);
            ulong q = _qkv.Pointer, k = _qkv.At(4L * c.QueryDim), v = _qkv.At(4L * (c.QueryDim + c.KvDim)), pool = _blocks.Memory.Pointer;
            int interleaved = _interleaved, layerIndex = layer;
            if (!append)
            {
                timeline?.Mark("kv_append");
                m.Launch(_kvAppend, ((uint)n, 1), (uint)Math.Min(1024, c.KvHeadCount * c.HeadDim / 2), (nint)(&k), (nint)(&v), (nint)(&pool), (nint)(&layerIndex),
                    (nint)(&blocksPointer), (nint)(&slotsPointer), (nint)(&positionsPointer), (nint)(&interleaved));
            }
            timeline?.Mark("attention");
            if (tiled)
            {
                int tokenCount = n;
                if (_attentionPrefillTensor != 0 && UseTensorCores)
                {
                    int tiles = (n + _tensorTileTokens - 1) / _tensorTileTokens, tileSplits = PrefillSplits(tiles, tableCount, n);
                    int entriesPerSplit = (tableCount + tileSplits - 1) / tileSplits;
                    ulong ml = _partialMl.Pointer, acc = _partialAcc.Pointer, tokenPositions = scattered ? positionsPointer : 0;
                    m.Launch(_attentionPrefillTensor, ((uint)tiles, (uint)c.KvHeadCount, (uint)tileSplits), 128,
                        (nint)(&q), (nint)(&pool), (nint)(&layerIndex), (nint)(&entries), (nint)(&tableCount), (nint)(&tokenCount), (nint)(&firstPosition), (nint)(&scale),
                        (nint)(&interleaved), (nint)(&entriesPerSplit), (nint)(&ml), (nint)(&acc), (nint)(&tokenPositions), (nint)(&operand));
                    if (tileSplits > 1)
                        m.Launch(_attentionMerge, ((uint)n, (uint)c.HeadCount), (uint)c.HeadDim, (nint)(&ml), (nint)(&acc), (nint)(&tileSplits), (nint)(&operand));
                }
                else
                    m.Launch(_attentionPrefill, (((uint)n + queryTile - 1) / queryTile, (uint)c.KvHeadCount), 256, (nint)(&q), (nint)(&pool), (nint)(&layerIndex),
                        (nint)(&entries), (nint)(&tableCount), (nint)(&tokenCount), (nint)(&firstPosition), (nint)(&scale), (nint)(&interleaved), (nint)(&operand));
            }
            else
            {
                ulong ml = _partialMl.Pointer, acc = _partialAcc.Pointer, counters = _splitCounters.Pointer;
                m.Launch(_attentionDecode, ((uint)n, (uint)c.KvHeadCount, (uint)splits), (uint)(32 * c.GroupSize), (nint)(&q), (nint)(&pool), (nint)(&layerIndex),
                    (nint)(&entries), (nint)(&startPointer), (nint)(&lengthPointer), (nint)(&sequencePointer), (nint)(&positionsPointer), (nint)(&scale),
                    (nint)(&interleaved), (nint)(&perSplit), (nint)(&splits), (nint)(&appendFlag), (nint)(&ml), (nint)(&acc), (nint)(&counters), (nint)(&operand));
            }
            timeline?.Mark("output product");
            Project(n, w.Output, _x, null, accumulate: true);
            norm = w.FfnNorm.Pointer;
            timeline?.Mark("rms_norm");
            bool fusedSwiglu = n == 1 && _gemvOneSwiglu != 0 && !w.GateUp[0].Quantised;
            // The fused gate/up + SwiGLU writes the operand buffer, so its input goes to the other one.
            ulong normed = fusedSwiglu ? _normed.Pointer : operand;
            m.Launch(_rmsNorm, ((uint)n, 1), NormThreads, (nint)(&x), (nint)(&norm), (nint)(&normed), (nint)(&epsilon));
            if (fusedSwiglu)
            {
                // One token: SwiGLU inside the product (the rows of gate and up interleaved).
                timeline?.Mark("gate/up product + swiglu");
                ulong gateUpWeights = w.GateUp[0].Buffer.Pointer;
                m.Launch(_gemvOneSwiglu, (OneTokenBlocks(ffn, hidden), 1), 128, (nint)(&gateUpWeights), (nint)(&normed), (nint)(&operand), (nint)(&ffn));
            }
            else
            {
                timeline?.Mark("gate/up product");
                Project(n, w.GateUp, _gateUp, null);
                ulong gateUp = _gateUp.Pointer;
                long elements = (long)n * ffn;
                timeline?.Mark("swiglu");
                if (w.GateUp[0].Quantised)
                    m.Launch(_swigluHalves, (Blocks(elements), 1), 256, (nint)(&gateUp), (nint)(&operand), (nint)(&ffn), (nint)(&elements));
                else m.Launch(_swiglu, (Blocks(elements), 1), 256, (nint)(&gateUp), (nint)(&operand), (nint)(&elements));
            }
            timeline?.Mark("down product");
            Project(n, w.Down, _x, null, accumulate: true);
        }
        if (rows == 0)
        {
            timeline?.Close();
            return;
        }
        // Only the rows that want logits (each chunk's last token, as a rule): gather them, normalise and classify them alone.
        ulong gathered = _gateUp.Pointer, finalNorm = _finalNorm.Pointer;
        timeline?.Mark("final norm + classifier");
        m.Launch(_gatherRows, ((uint)rows, 1), Threads, (nint)(&x), (nint)(&rowsPointer), (nint)(&gathered), (nint)(&hidden));
        m.Launch(_rmsNorm, ((uint)rows, 1), NormThreads, (nint)(&gathered), (nint)(&finalNorm), (nint)(&operand), (nint)(&epsilon));
        Project(rows, _classifier, _logits, null);
        timeline?.Close();
    }

    /// <summary>
    /// Splits of the context for the tensor-core prefill attention: one while its tiles fill the GPU; else enough that
    /// about two blocks per multiprocessor run, each over at least 8 entries (128 keys), within the partial buffers.
    /// </summary>
    private int PrefillSplits(int tiles, int entries, int tokens)
    {
        int blocks = tiles * _config.KvHeadCount;
        if (blocks >= _device.Multiprocessors) return 1;
        int wanted = (2 * _device.Multiprocessors + blocks - 1) / blocks;
        return Math.Max(1, Math.Min(wanted, Math.Min(entries / 8, Math.Max(SplitBudget, _maxTokens) / tokens)));
    }

    /// <summary>Tokens per block of the scalar tiled prefill kernel.</summary>
    private int QueryTile => Math.Clamp(2048 / (_config.GroupSize * _config.HeadDim), 1, 16);

    private static uint Blocks(long count) => (uint)Math.Min((count + 255) / 256, 65535);

    /// <summary>Steps of at most this many tokens multiply through the <c>gemv</c> kernel (its GEMV_TOKENS), longer ones through cuBLAS.</summary>
    private const int GemvTokens = 8;

    /// <summary>output[t, out] (=, or += with <paramref name="accumulate"/>) operand[t, in] · W[out, in]ᵀ (+ bias); the operand buffer holds the input.</summary>
    private void Project(int tokens, Weight[] product, DeviceBuffer output, DeviceBuffer? bias, bool accumulate = false)
    {
        if (product[0].Quantised) ProjectQuantised(tokens, product, output, accumulate);
        else Project(tokens, product[0], output, accumulate);
        if (bias is not null)
        {
            ulong y = output.Pointer, bp = bias.Pointer;
            int width = Width(product);
            _module.Launch(_addBias, ((uint)tokens, 1), Threads, (nint)(&y), (nint)(&bp), (nint)(&width));
        }
    }

    private void Project(int tokens, Weight weight, DeviceBuffer output, bool accumulate)
    {
        int elementBytes = weight.Type == DType.F32 ? 4 : 2;
        if (tokens == 1 && weight.Columns * elementBytes % 16 == 0 && _gemvOne.TryGetValue(weight.Columns, out nint gemvOne))
        {
            ulong w = weight.Buffer.Pointer, x = _operand.Pointer, y = output.Pointer;
            int rows = weight.Rows, add = accumulate ? 1 : 0;
            _module.Launch(gemvOne, (OneTokenBlocks(rows, weight.Columns), 1), 128, (nint)(&w), (nint)(&x), (nint)(&y), (nint)(&rows), (nint)(&add));
        }
        else if (tokens <= GemvTokens && weight.Columns * elementBytes % 16 == 0)
        {
            ulong w = weight.Buffer.Pointer, x = _operand.Pointer, y = output.Pointer;
            int rows = weight.Rows, columns = weight.Columns, add = accumulate ? 1 : 0;
            // About 8192 warps in flight: a matrix with few rows gets several warps per row.
            int warpsPerRow = (int)Math.Clamp(System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, 8192 / rows + 1)) / 2, 1, 8);
            int rowsPerBlock = 8 / warpsPerRow;
            _module.Launch(_gemv, ((uint)((rows + rowsPerBlock - 1) / rowsPerBlock), 1), 256, (nint)(&w), (nint)(&x), (nint)(&y), (nint)(&rows), (nint)(&columns),
                (nint)(&tokens), (nint)(&add), (nint)(&warpsPerRow));
        }
        else _device.MatMul(weight.Buffer, _operand, weight.Type, weight.Rows, weight.Columns, tokens, output, accumulate);
    }

    /// <summary>
    /// The product of quantised parts, each writing its rows of output[t, ·]: up to <see cref="QuantisedGemvTokens"/> tokens
    /// straight from the blocks (the warps of a row group chosen so about <see cref="QuantisedWarps"/> are in flight), up to
    /// <see cref="QuantisedTensorCoreTokens"/> on the tensor cores from the decoded blocks (bf16 operands), longer
    /// steps through cuBLAS on slices dequantised into the scratch buffer.
    /// </summary>
    private void ProjectQuantised(int tokens, Weight[] parts, DeviceBuffer output, bool accumulate)
    {
        int width = Width(parts), add = accumulate ? 1 : 0, columns = parts[0].Columns;
        ulong x = _operand.Pointer;
        int firstRow = 0;
        foreach (var part in parts)
        {
            var kernels = _quantised[part.Type];
            int groups = part.Rows / 8;
            ulong w = part.Buffer.Pointer, y = output.At(4L * firstRow);
            if (tokens <= QuantisedGemvTokens)
            {
                int warpsPerGroup = (int)Math.Clamp(System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, QuantisedWarps / groups)), 1, 8), groupsPerBlock = 8 / warpsPerGroup;
                _module.Launch(tokens == 1 ? kernels.GemvOne : kernels.Gemv, ((uint)((groups + groupsPerBlock - 1) / groupsPerBlock), 1), 256, (nint)(&w), (nint)(&x),
                    (nint)(&y), (nint)(&groups), (nint)(&columns), (nint)(&tokens), (nint)(&add), (nint)(&warpsPerGroup), (nint)(&width));
            }
            else if (kernels.Gemm != 0 && tokens <= _quantisedTensorCoreTokens)
            {
                int units = (groups * 8 + QuantisedTileRows - 1) / QuantisedTileRows, tokenTiles = (tokens + QuantisedTileTokens - 1) / QuantisedTileTokens;
                int subs = columns / 32, tiles = units * tokenTiles, splits = 1;
                // Few tiles (few, long rows): split the columns, a sub-block a warp at least, until 16 warps an SM are in flight
                // (on the H200 a batch-32 step took 2.50 ms with 8,192 warps in flight, 2.08 with 2,048: more splits, more sums).
                int target = 16 * _device.Multiprocessors;
                if (tiles * QuantisedTileWarps < target && tiles <= QuantisedCounters)
                    splits = Math.Clamp(target / (tiles * QuantisedTileWarps), 1, Math.Max(1, Math.Min(subs / QuantisedTileWarps,
                        QuantisedPartialFloats / (tiles * QuantisedTileRows * QuantisedTileTokens))));
                int perSplit = (subs + splits - 1) / splits;
                splits = (subs + perSplit - 1) / perSplit;
                ulong partials = _quantisedPartials!.Pointer, counters = _quantisedCounters!.Pointer;
                _module.Launch(kernels.Gemm, ((uint)units, (uint)splits, (uint)tokenTiles), 32 * QuantisedTileWarps, (nint)(&w), (nint)(&x), (nint)(&y), (nint)(&groups), (nint)(&columns),
                    (nint)(&tokens), (nint)(&add), (nint)(&width), (nint)(&perSplit), (nint)(&partials), (nint)(&counters));
            }
            else
            {
                ulong scratch = _dequantised!.Pointer;
                int sliceGroups = (int)Math.Max(1, DequantisedElements / (8L * columns));
                for (int first = 0; first < groups; first += sliceGroups)
                {
                    int count = Math.Min(sliceGroups, groups - first);
                    long pieces = (long)count * 8 * columns / 32 * (part.Type == DType.Q8_0x8 ? 2 : 1);   // quantised.cu: a thread per 16 bytes of levels
                    _module.Launch(kernels.Rows, ((uint)Math.Min((pieces + 255) / 256, 8192), 1), 256, (nint)(&w), (nint)(&columns), (nint)(&first), (nint)(&count), (nint)(&scratch));
                    _device.Gemm(false, true, tokens, 8 * count, columns, 1f, new GemmOperand(x, _weightType, columns), new GemmOperand(scratch, _weightType, columns),
                        accumulate ? 1f : 0f, new GemmOperand(output.At(4L * (firstRow + 8 * first)), DType.F32, width));
                }
            }
            firstRow += part.Rows;
        }
    }

    /// <summary>Blocks of the one-token products for <paramref name="units"/> rows (or gate/up pairs) of <paramref name="columns"/>: mirrors kernels.cu's GEMV_SPLIT.</summary>
    private uint OneTokenBlocks(int units, int columns)
    {
        int bytes = columns * (_weightType == DType.BF16 ? 2 : 4), laneElements = _weightType == DType.BF16 ? 8 : 4;
        int split = bytes >= 16384 && columns % (4 * laneElements) == 0 ? 4 : bytes >= 4096 && columns % (2 * laneElements) == 0 ? 2 : 1;
        int perBlock = 4 / split;
        return (uint)((units + perBlock - 1) / perBlock);
    }

    /// <summary>Rows of a product's output: its parts' rows together (a loop, as it runs in every step's enqueue).</summary>
    private static int Width(Weight[] product)
    {
        int rows = 0;
        foreach (var part in product) rows += part.Rows;
        return rows;
    }

    /// <summary>Whether <paramref name="tensor"/> stays block-quantised on the device (an interleaved layout; other block types are widened).</summary>
    private static bool StaysQuantised(WeightTensor tensor) => tensor.IsPresent && tensor.Type.InterleavedRows() == 8;

    /// <summary>
    /// Uploads one product's <paramref name="parts"/>: block-quantised ones as stored (consecutive parts of one type as one
    /// matrix: their rows simply follow each other), else all of them as <paramref name="floatType"/> (<see cref="Upload"/>).
    /// </summary>
    private Weight[] UploadProduct(WeightTensor[] parts, DType floatType, bool interleaveRows = false)
    {
        if (!parts.All(StaysQuantised)) return [Upload(parts, floatType, interleaveRows)];
        var weights = new List<Weight>();
        for (int first = 0, end; first < parts.Length; first = end)
        {
            long bytes = 0;
            int rows = 0;
            for (end = first; end < parts.Length && parts[end].Type == parts[first].Type && parts[end].Columns == parts[first].Columns; end++)
            {
                bytes += parts[end].ByteCount;
                rows += parts[end].Rows;
            }
            var buffer = Own(_device.Allocate(bytes));
            long offset = 0;
            for (int p = first; p < end; p++)
                for (long at = 0; at < parts[p].ByteCount; at += 1 << 26)
                {
                    int length = (int)Math.Min(1 << 26, parts[p].ByteCount - at);
                    _device.Upload(new ReadOnlySpan<byte>((byte*)parts[p].Data + at, length), buffer, offset);
                    offset += length;
                }
            weights.Add(new Weight(buffer, rows, parts[first].Columns, parts[first].Type));
        }
        return [.. weights];
    }

    private DeviceBuffer Own(DeviceBuffer buffer)
    {
        _owned.Add(buffer);
        return buffer;
    }

    /// <summary>
    /// Uploads <paramref name="parts"/> (same column count) as one matrix of <paramref name="type"/>: stacked by rows, or
    /// with <paramref name="interleaveRows"/> (parts of one shape) row r of each part in turn — gate/up as rows 2i, 2i + 1.
    /// </summary>
    private Weight Upload(WeightTensor[] parts, DType type, bool interleaveRows = false)
    {
        int elementBytes = type == DType.F32 ? 4 : 2, columns = parts[0].Columns;
        if (parts.Any(p => p.Columns != columns)) throw new ArgumentException("Fused matrices need one column count.", nameof(parts));
        if (interleaveRows && parts.Any(p => p.Rows != parts[0].Rows)) throw new ArgumentException("Interleaved matrices need one row count.", nameof(parts));
        var buffer = Own(_device.Allocate(parts.Sum(p => p.ElementCount) * elementBytes));
        // In chunks of about 16 MB of f32 rows: host memory stays small for large matrices.
        int chunk = Math.Max(1, (1 << 22) / columns);
        var rows = new float[(long)chunk * columns * (interleaveRows ? parts.Length : 1)];
        var staged = interleaveRows ? new float[(long)chunk * columns] : rows;
        var converted = new ushort[rows.Length];
        long offset = 0;
        void Emit(Span<float> values)
        {
            if (type == DType.F32) _device.Upload<float>(values, buffer, offset);
            else
            {
                ElementConversion.SingleToBF16(values, converted.AsSpan(0, values.Length));
                _device.Upload<ushort>(converted.AsSpan(0, values.Length), buffer, offset);
            }
            offset += (long)values.Length * elementBytes;
        }
        if (interleaveRows)
            for (int r = 0; r < parts[0].Rows; r += chunk)
            {
                int count = Math.Min(chunk, parts[0].Rows - r);
                for (int p = 0; p < parts.Length; p++)
                {
                    parts[p].ReadRows(r, count, staged.AsSpan(0, count * columns));
                    for (int i = 0; i < count; i++) staged.AsSpan(i * columns, columns).CopyTo(rows.AsSpan((i * parts.Length + p) * columns, columns));
                }
                Emit(rows.AsSpan(0, count * parts.Length * columns));
            }
        else
            foreach (var tensor in parts)
                for (int r = 0; r < tensor.Rows; r += chunk)
                {
                    int count = Math.Min(chunk, tensor.Rows - r);
                    tensor.ReadRows(r, count, rows.AsSpan(0, count * columns));
                    Emit(rows.AsSpan(0, count * columns));
                }
        return new Weight(buffer, parts.Sum(p => p.Rows), columns, type);
    }

    /// <summary>The q, k and v biases as one vector for the fused product (zeros for any that is absent).</summary>
    private DeviceBuffer UploadBiases(in WeightTensor query, in WeightTensor key, in WeightTensor value)
    {
        var values = new float[_config.QueryDim + 2 * _config.KvDim];
        if (query.IsPresent) query.ReadRows(0, query.Rows, values.AsSpan(0, _config.QueryDim));
        if (key.IsPresent) key.ReadRows(0, key.Rows, values.AsSpan(_config.QueryDim, _config.KvDim));
        if (value.IsPresent) value.ReadRows(0, value.Rows, values.AsSpan(_config.QueryDim + _config.KvDim, _config.KvDim));
        var buffer = Own(_device.Allocate(values.Length * 4L));
        _device.Upload<float>(values, buffer);
        return buffer;
    }

    private DeviceBuffer? UploadVector(in WeightTensor tensor)
    {
        if (!tensor.IsPresent) return null;
        var values = new float[tensor.ElementCount];
        tensor.ReadRows(0, tensor.Rows, values);
        var buffer = Own(_device.Allocate(values.Length * 4L));
        _device.Upload<float>(values, buffer);
        return buffer;
    }

    private void ClearGraphs()
    {
        foreach (var graph in _graphs.Values) graph.Dispose();
        _graphs.Clear();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _device.MakeCurrent();
        ClearGraphs();
        _stageTimeline?.Dispose();
        _blocks.Dispose();
        _int8Staging?.Dispose();
        _draws?.Dispose();
        foreach (var buffer in _owned) buffer.Dispose();
        _owned.Clear();
        if (OwnsDevice) _device.Dispose();
    }
}
