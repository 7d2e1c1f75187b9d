using System.Reflection;
using KvPacket.Compute.Cuda;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Training.Cuda;

/// <summary>
/// The transformer's forward and backward passes for training on one GPU — the same computation as the CPU
/// <see cref="TrainingModel{T}"/> (its reference), over a <see cref="TrainingBatch"/> of sequences. Matrix products go
/// through cuBLAS (dX and dW as products too), everything else through <c>training.cu</c>. Operands are f32 (the parity
/// path) or bf16 with f32 accumulation; master weights, gradients, the residual stream and AdamW's moments are f32.
/// Attention with bf16 operands and head dim 64 is fused (<c>flash_attention.cu</c>, FlashAttention-2 style: only each
/// row's log-sum-exp is kept); otherwise it keeps its probabilities [B, H, n, n] for the backward pass.
/// <see cref="RecomputeActivations"/> keeps only each layer's input and recomputes the layer in the backward pass. Gradients accumulate over calls of <see cref="ForwardBackward"/> (micro-batches) until <see cref="Step"/>.
/// Every reduction has a fixed order (no atomics): the same batch gives the same bits, so a resumed run continues exactly.
/// </summary>
public sealed unsafe class CudaTrainingModel : IDisposable
{
    private const uint Threads = 256;
    private const int NormChunks = 64;
    private const int NormBlocks = 1024;

    private readonly CudaDevice _device;
    private readonly CudaModule _module;
    private readonly ModelConfig _config;
    private readonly ParameterLayout _layout;
    private readonly DType _operand;
    private readonly int _operandBytes;
    private readonly string _suffix;
    private readonly int _maxRows, _maxLength, _maxSequences, _maxTeacherRows;
    private readonly List<DeviceBuffer> _owned = [];
    private readonly DeviceBuffer _master, _operandWeights, _gradients, _firstMoments, _secondMoments;
    private readonly DeviceBuffer _inverseFrequencies;
    private readonly DeviceBuffer _source, _positions, _firstVisible, _targets, _teacherRows, _weights, _teacher;
    private readonly DeviceBuffer _embedRows, _embedStarts, _embedDestinations;
    private readonly DeviceBuffer[] _residual;           // [layers + 1] × [rows, hidden] f32: each layer's input, then the final norm's
    private readonly Activations[] _activations;          // per layer, or one set reused when recomputing
    private readonly DeviceBuffer _q, _k, _v, _scores, _delta, _heads, _finalNormed, _finalRstd, _logits, _dLogits, _rowLoss, _scalar, _normPartials;
    private readonly DeviceBuffer _dx, _dxOperand, _dNormed, _dAttended, _dHeadsOperand, _dProbabilities, _dScores, _dqh, _dkh, _dvh;
    private readonly DeviceBuffer _dq, _dk, _dv, _dqOperand, _dkOperand, _dvOperand, _dHidden, _dGateOperand, _dUpOperand, _rowsScratch, _columnPartials;
    private int _adamSteps;
    private readonly long _trainableOffset, _trainableCount;

    /// <summary>What one layer's forward pass keeps for its backward pass.</summary>
    private sealed class Activations
    {
        public required DeviceBuffer AttentionNormed, AttentionRstd, Qh, Kh, Vh, Attended, Mid, FfnNormed, FfnRstd, Gate, Up, Hidden;
        /// <summary>Kept attention: the probabilities [B, H, n, n]; flash attention: each row's log2-sum-exp [B, H, n] (the other is unused).</summary>
        public required DeviceBuffer Probabilities, Lse;
    }

    /// <summary>
    /// Uploads <paramref name="weights"/> (and <paramref name="softRows"/> adapter rows, initially <paramref name="soft"/>)
    /// and sizes every buffer for batches of at most <paramref name="maxSequences"/> × <paramref name="maxLength"/> rows
    /// and <paramref name="maxTeacherRows"/> teacher rows.
    /// </summary>
    public CudaTrainingModel(CudaDevice device, ModelConfig config, TrainingWeights<float> weights, CudaTrainingOptions options,
        int maxSequences, int maxLength, int softRows = 0, ReadOnlySpan<float> soft = default, int maxTeacherRows = 0)
    {
        if (options.Operand is not (DType.F32 or DType.BF16)) throw new ArgumentException($"operands are F32 or BF16, not {options.Operand}", nameof(options));
        _device = device;
        _config = config;
        _operand = options.Operand;
        _operandBytes = options.Operand == DType.F32 ? 4 : 2;
        _suffix = options.Operand == DType.F32 ? "_f32" : "_bf16";
        TrainWeights = options.TrainWeights;
        FlashAttention = options.FlashAttention && options.Operand == DType.BF16 && config.HeadDim == FlashHeadDim;
        RecomputeActivations = options.RecomputeActivations;
        _maxSequences = maxSequences;
        _maxLength = maxLength;
        _maxRows = maxSequences * maxLength;
        _maxTeacherRows = maxTeacherRows;
        _layout = new ParameterLayout(config, softRows);
        _module = device.LoadModule(KernelSource.Value, "training");

        long count = _layout.Count;
        // A frozen model needs gradients and moments for its adapter rows only.
        (_trainableOffset, _trainableCount) = TrainWeights ? (0L, count) : (_layout.Soft.Offset, (long)_layout.Soft.Count);
        _master = Allocate(count * 4);
        _operandWeights = _operand == DType.F32 ? _master : Allocate(count * _operandBytes);
        _gradients = Allocate(_trainableCount * 4);
        _firstMoments = Allocate(_trainableCount * 4);
        _secondMoments = Allocate(_trainableCount * 4);
        device.Fill(_gradients, 0);
        device.Fill(_firstMoments, 0);
        device.Fill(_secondMoments, 0);
        UploadWeights(weights, soft);
        var frequencies = Compute.Cpu.RotaryEmbedding.Frequencies(config);
        _inverseFrequencies = Allocate(frequencies.Length * 8L);
        device.Upload<double>(frequencies, _inverseFrequencies);

        int rows = _maxRows, d = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, f = config.IntermediateSize, v = config.VocabSize;
        long headElements = (long)maxSequences * config.HeadCount * maxLength * config.HeadDim;   // [B, H, n, d]
        long scoreElements = (long)maxSequences * config.HeadCount * maxLength * maxLength;       // [B, H, n, n]
        _source = Allocate(rows * 4L); _positions = Allocate(rows * 4L); _firstVisible = Allocate(rows * 4L);
        _targets = Allocate(rows * 4L); _teacherRows = Allocate(rows * 4L); _weights = Allocate(rows * 4L);
        _teacher = Allocate(Math.Max(1, (long)maxTeacherRows * v) * 4);
        _embedRows = Allocate(rows * 4L); _embedStarts = Allocate((rows + 1) * 4L); _embedDestinations = Allocate(rows * 4L);
        _residual = [.. Enumerable.Range(0, config.LayerCount + 1).Select(_ => Allocate((long)rows * d * 4))];
        _activations = [.. Enumerable.Range(0, RecomputeActivations ? 1 : config.LayerCount).Select(_ => new Activations
        {
            AttentionNormed = AllocateOperand((long)rows * d), AttentionRstd = Allocate(rows * 4L),
            Qh = AllocateOperand(headElements), Kh = AllocateOperand(headElements), Vh = AllocateOperand(headElements),
            Probabilities = FlashAttention ? Allocate(4) : AllocateOperand(scoreElements), Lse = FlashAttention ? Allocate(headElements / config.HeadDim * 4) : Allocate(4),
            Attended = AllocateOperand((long)rows * q), Mid = Allocate((long)rows * d * 4),
            FfnNormed = AllocateOperand((long)rows * d), FfnRstd = Allocate(rows * 4L),
            Gate = Allocate((long)rows * f * 4), Up = Allocate((long)rows * f * 4), Hidden = AllocateOperand((long)rows * f),
        })];
        _q = Allocate((long)rows * q * 4); _k = Allocate((long)rows * kv * 4); _v = Allocate((long)rows * kv * 4);
        _scores = FlashAttention ? Allocate(4) : Allocate(scoreElements * 4);
        _delta = FlashAttention ? Allocate(headElements / config.HeadDim * 4) : Allocate(4);
        _heads = FlashAttention ? Allocate(4) : Allocate(headElements * 4);
        _finalNormed = AllocateOperand((long)rows * d); _finalRstd = Allocate(rows * 4L);
        _logits = Allocate((long)rows * v * 4); _dLogits = AllocateOperand((long)rows * v);
        _rowLoss = Allocate(rows * 4L); _scalar = Allocate(16); _normPartials = Allocate(NormBlocks * 4);
        _dx = Allocate((long)rows * d * 4);
        _dxOperand = _operand == DType.F32 ? _dx : AllocateOperand((long)rows * d);
        _dNormed = Allocate((long)rows * d * 4); _dAttended = Allocate((long)rows * q * 4);
        _dHeadsOperand = AllocateOperand(headElements);
        _dProbabilities = FlashAttention ? Allocate(4) : Allocate(scoreElements * 4);
        _dScores = FlashAttention ? Allocate(4) : AllocateOperand(scoreElements);
        _dqh = Allocate(headElements * 4); _dkh = Allocate(headElements * 4); _dvh = Allocate(headElements * 4);
        _dq = Allocate((long)rows * q * 4); _dk = Allocate((long)rows * kv * 4); _dv = Allocate((long)rows * kv * 4);
        _dqOperand = AllocateOperand((long)rows * q); _dkOperand = AllocateOperand((long)rows * kv); _dvOperand = AllocateOperand((long)rows * kv);
        _dHidden = Allocate((long)rows * f * 4); _dGateOperand = AllocateOperand((long)rows * f); _dUpOperand = AllocateOperand((long)rows * f);
        int widest = Math.Max(d, q);
        _rowsScratch = Allocate((long)rows * widest * 4);
        _columnPartials = Allocate((long)NormChunks * widest * 4);
    }

    /// <summary>Whether weight gradients are computed (full training) or only the adapter rows' (frozen model).</summary>
    public bool TrainWeights { get; }

    /// <summary>Whether attention runs fused (FlashAttention-2 style) instead of keeping its probabilities.</summary>
    public bool FlashAttention { get; }

    /// <summary>The head dimension the fused attention kernels are compiled for (flash_attention.cu).</summary>
    private const int FlashHeadDim = 64;
    private const int FlashTile = 64, FlashThreads = 128;
    private static readonly string FlashForward = $"flash_forward_{FlashHeadDim}", FlashBackwardKv = $"flash_backward_kv_{FlashHeadDim}",
        FlashBackwardQ = $"flash_backward_q_{FlashHeadDim}";

    /// <summary>Whether only each layer's input is kept and the layer recomputed in the backward pass.</summary>
    public bool RecomputeActivations { get; }

    /// <summary>The parameter vector's layout.</summary>
    public ParameterLayout Layout => _layout;

    /// <summary>Bytes of device memory this model holds.</summary>
    public long DeviceBytes => _owned.Sum(b => b.Bytes);

    /// <summary>When set, every stage of a step is marked on it (for a breakdown of eager step time).</summary>
    public CudaTimeline? Timeline { get; set; }

    private bool _recomputing;

    private void Stage(string label)
    {
        if (!_recomputing) Timeline?.Mark(label);   // a layer recomputed in the backward pass counts as "recomputation"
    }

    /// <summary>AdamW updates applied so far.</summary>
    public int OptimiserSteps => _adamSteps;

    private static readonly Lazy<string> KernelSource = new(() =>
    {
        using var stream = typeof(CudaTrainingModel).Assembly.GetManifestResourceStream("KvPacket.Training.Cuda.training.cu")
            ?? throw new InvalidOperationException("training.cu is not embedded in the assembly");
        using var flash = typeof(CudaTrainingModel).Assembly.GetManifestResourceStream("KvPacket.Training.Cuda.flash_attention.cu")
            ?? throw new InvalidOperationException("flash_attention.cu is not embedded in the assembly");
        return new StreamReader(stream).ReadToEnd() + "\n" + new StreamReader(flash).ReadToEnd();
    });

    private DeviceBuffer Allocate(long bytes)
    {
        var buffer = _device.Allocate(bytes);
        _owned.Add(buffer);
        return buffer;
    }

    private DeviceBuffer AllocateOperand(long elements) => Allocate(elements * _operandBytes);

    // ---- parameters ----

    private ulong Master(ParameterLayout.Tensor t) => _master.At(t.Offset * 4);
    private ulong Grad(ParameterLayout.Tensor t) => _gradients.At((t.Offset - _trainableOffset) * 4);
    private ulong Moment(DeviceBuffer moments, ParameterLayout.Tensor t) => moments.At((t.Offset - _trainableOffset) * 4);
    private ulong Op(ParameterLayout.Tensor t) => _operandWeights.At(t.Offset * _operandBytes);

    /// <summary>Replaces the weights (and adapter rows) on the device.</summary>
    public void UploadWeights(TrainingWeights<float> weights, ReadOnlySpan<float> soft)
    {
        foreach (var (tensor, values) in _layout.Pair(weights)) _device.Upload<float>(values, _master, tensor.Offset * 4);
        if (_layout.SoftRows > 0) UploadSoft(soft);
        RefreshOperands(0, _layout.Count);
    }

    /// <summary>The weights as they are on the device (after training steps).</summary>
    public TrainingWeights<float> DownloadWeights() => Download(_master);

    /// <summary>The accumulated weight gradients (summed over micro-batches since the last <see cref="ZeroGradients"/>); full training only.</summary>
    public TrainingWeights<float> DownloadGradients() =>
        TrainWeights ? Download(_gradients) : throw new InvalidOperationException("a frozen model has no weight gradients");

    /// <summary>Replaces the adapter rows ([soft rows, hidden]) on the device.</summary>
    public void UploadSoft(ReadOnlySpan<float> soft)
    {
        if (soft.Length != _layout.Soft.Count) throw new ArgumentException($"{_layout.SoftRows} adapter rows need {_layout.Soft.Count} values, got {soft.Length}");
        _device.Upload(soft, _master, _layout.Soft.Offset * 4);
    }

    /// <summary>The adapter rows, [soft rows, hidden].</summary>
    public float[] DownloadSoft()
    {
        var values = new float[_layout.Soft.Count];
        _device.Download<float>(_master, values, _layout.Soft.Offset * 4);
        return values;
    }

    /// <summary>The adapter rows' accumulated gradients.</summary>
    public float[] DownloadSoftGradients()
    {
        var values = new float[_layout.Soft.Count];
        DownloadSoftGradients(values);
        return values;
    }

    /// <summary>The adapter rows' accumulated gradients, into <paramref name="destination"/> ([soft rows, hidden]).</summary>
    public void DownloadSoftGradients(Span<float> destination) =>
        _device.Download(_gradients, destination[.._layout.Soft.Count], (_layout.Soft.Offset - _trainableOffset) * 4);

    private TrainingWeights<float> Download(DeviceBuffer buffer)
    {
        var all = new float[_layout.Count];
        _device.Download<float>(buffer, all);
        return _layout.Unpack(all);
    }

    /// <summary>
    /// Saves every parameter, the trainable ones' AdamW moments and the step in the CPU trainer's checkpoint format
    /// (<see cref="TrainingCheckpoint"/>); <paramref name="first"/> and <paramref name="second"/> are two figures the run
    /// wants back on resume (initial losses, say).
    /// </summary>
    internal void SaveCheckpoint(string path, string signature, int step, double first = 0, double second = 0)
    {
        float[] p = new float[_layout.Count], m = new float[_trainableCount], v = new float[_trainableCount];
        _device.Download<float>(_master, p);
        _device.Download<float>(_firstMoments, m);
        _device.Download<float>(_secondMoments, v);
        new TrainingCheckpoint(signature, step, p, _adamSteps, [.. m.Select(x => (double)x)], [.. v.Select(x => (double)x)], [], first, second, step, 0).Save(path);
    }

    /// <summary>
    /// Restores the state <see cref="SaveCheckpoint"/> wrote to <paramref name="path"/> and returns the checkpoint (its
    /// step and figures), or null when there is no such file.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is damaged, or was written by a run with another signature or model size.</exception>
    internal TrainingCheckpoint? Resume(string path, string signature)
    {
        if (!File.Exists(path)) return null;
        var saved = TrainingCheckpoint.Load(path);
        if (saved.Signature != signature)
            throw new InvalidDataException($"{path}: written by a run with other settings ({saved.Signature}); this run is {signature}.");
        if (saved.Parameters.Length != _layout.Count || saved.FirstMoments.Length != _trainableCount || saved.SecondMoments.Length != _trainableCount)
            throw new InvalidDataException($"{path}: holds {saved.Parameters.Length} parameters and {saved.FirstMoments.Length} moments; the model has {_layout.Count}, {_trainableCount} trainable");
        _device.Upload<float>(saved.Parameters, _master);
        _device.Upload<float>([.. saved.FirstMoments.Select(x => (float)x)], _firstMoments);
        _device.Upload<float>([.. saved.SecondMoments.Select(x => (float)x)], _secondMoments);
        _adamSteps = saved.OptimiserSteps;
        RefreshOperands(0, _layout.Count);
        return saved;
    }

    private void RefreshOperands(long offset, long count)
    {
        if (_operand == DType.F32) return;
        ulong source = _master.At(offset * 4), destination = _operandWeights.At(offset * _operandBytes);
        Launch(Typed("copy_out"), (Blocks(count), 1), Threads, source, destination, count);
    }

    // ---- launches ----

    private static uint Blocks(long elements) => (uint)Math.Clamp((elements + Threads - 1) / Threads, 1, 8192);

    /// <summary>
    /// Queues <paramref name="kernel"/>. Each argument is passed in an 8-byte slot (a 4-byte int or float in its low
    /// bytes, which is what the kernel reads on a little-endian device): no boxing, nothing allocated per launch.
    /// </summary>
    private void Launch(string kernel, (uint X, uint Y) grid, uint block, params ReadOnlySpan<KernelArgument> arguments)
    {
        var values = stackalloc ulong[arguments.Length];
        var pointers = stackalloc nint[arguments.Length];
        for (int i = 0; i < arguments.Length; i++)
        {
            values[i] = arguments[i].Bits;
            pointers[i] = (nint)(values + i);
        }
        _module.Launch(_module.Function(kernel), (grid.X, grid.Y, 1), block, new ReadOnlySpan<nint>(pointers, arguments.Length));
    }

    /// <summary>One kernel argument's bits.</summary>
    private readonly record struct KernelArgument(ulong Bits)
    {
        public static implicit operator KernelArgument(ulong pointer) => new(pointer);
        public static implicit operator KernelArgument(long value) => new((ulong)value);
        public static implicit operator KernelArgument(int value) => new((uint)value);
        public static implicit operator KernelArgument(float value) => new(BitConverter.SingleToUInt32Bits(value));
    }

    /// <summary>The operand type's instantiation of <paramref name="kernel"/> (<c>kernel_f32</c> or <c>kernel_bf16</c>), its name made once.</summary>
    private string Typed(string kernel)
    {
        if (!_typedKernels.TryGetValue(kernel, out string? name)) _typedKernels[kernel] = name = kernel + _suffix;
        return name;
    }

    private readonly Dictionary<string, string> _typedKernels = [];

    private GemmOperand Operand(ulong pointer, int leading, long stride = 0) => new(pointer, _operand, leading, stride);
    private static GemmOperand F32(ulong pointer, int leading, long stride = 0) => new(pointer, DType.F32, leading, stride);

    /// <summary>y [rows, out] (+)= x [rows, in] · W [out, in]ᵀ.</summary>
    private void Linear(ulong x, ulong w, ulong y, int rows, int inputs, int outputs, bool accumulate) =>
        _device.Gemm(false, true, rows, outputs, inputs, 1f, Operand(x, inputs), Operand(w, inputs), accumulate ? 1f : 0f, F32(y, outputs));

    /// <summary>dx [rows, in] (+)= dy [rows, out] · W [out, in]; and, training weights, dW [out, in] += dyᵀ · x.</summary>
    private void LinearBackward(ulong dyOperand, ulong w, ulong x, ulong dx, ulong dw, int rows, int inputs, int outputs, bool accumulateDx)
    {
        _device.Gemm(false, false, rows, inputs, outputs, 1f, Operand(dyOperand, outputs), Operand(w, inputs), accumulateDx ? 1f : 0f, F32(dx, inputs));
        if (TrainWeights) _device.Gemm(true, false, outputs, inputs, rows, 1f, Operand(dyOperand, outputs), Operand(x, inputs), 1f, F32(dw, inputs));
    }

    /// <summary>gradient [columns] += Σ over rows of values [rows, columns], in a fixed order.</summary>
    private void ColumnSum(ulong values, long rows, int columns, ulong gradient)
    {
        uint blocks = (uint)((columns + Threads - 1) / Threads);
        Launch("column_sum_f32", (blocks, NormChunks), Threads, values, rows, columns, _columnPartials.Pointer, 0);
        Launch("column_sum_f32", (blocks, 1), Threads, _columnPartials.Pointer, (long)NormChunks, columns, gradient, 1);
    }

    private void ToOperand(ulong source, ulong destination, long count)
    {
        if (_operand == DType.F32) { if (source != destination) _device.Copy(source, destination, count * 4); return; }
        Launch(Typed("copy_out"), (Blocks(count), 1), Threads, source, destination, count);
    }

    // ---- forward and backward ----

    /// <summary>
    /// Runs <paramref name="batch"/> forward and backward, adding its gradients — of Σ_rows weight·loss, times
    /// <paramref name="lossScale"/> — to the accumulated ones, and returns that scaled loss (waits for the GPU).
    /// </summary>
    public double ForwardBackward(TrainingBatch batch, double lossScale)
    {
        Forward(batch, (float)lossScale);
        Backward(batch);
        return SummedLoss(batch) * lossScale;
    }

    /// <summary>The loss of <paramref name="batch"/> (Σ weight·loss · <paramref name="lossScale"/>) without touching the gradients.</summary>
    public double Loss(TrainingBatch batch, double lossScale)
    {
        Forward(batch, (float)lossScale);
        return SummedLoss(batch) * lossScale;
    }

    /// <summary>Σ of the rows' weighted losses of the last forward pass (waits for the GPU).</summary>
    private double SummedLoss(TrainingBatch batch)
    {
        Launch("sum_all_f32", (1, 1), 1024, _rowLoss.Pointer, (long)batch.Rows, _scalar.Pointer);
        var loss = new float[1];
        _device.Download<float>(_scalar, loss);
        return loss[0];
    }

    private void Upload(TrainingBatch batch)
    {
        if (batch.Sequences > _maxSequences || batch.Length > _maxLength)
            throw new ArgumentException($"a batch of {batch.Sequences} × {batch.Length} rows exceeds the model's {_maxSequences} × {_maxLength}");
        if (batch.Teacher.Length > (long)_maxTeacherRows * _config.VocabSize)
            throw new ArgumentException($"the batch has {batch.Teacher.Length / _config.VocabSize} teacher rows; the model was sized for {_maxTeacherRows}");
        foreach (int s in batch.Source)
            if (s >= _config.VocabSize || (s < 0 && -1 - s >= _layout.SoftRows))
                throw new ArgumentException($"row source {s} is neither a token below {_config.VocabSize} nor one of {_layout.SoftRows} adapter rows");
        _device.Upload<int>(batch.Source, _source);
        _device.Upload<int>(batch.Positions, _positions);
        _device.Upload<int>(batch.FirstVisible, _firstVisible);
        _device.Upload<int>(batch.Targets, _targets);
        _device.Upload<int>(batch.TeacherRows, _teacherRows);
        _device.Upload<float>(batch.Weights, _weights);
        if (batch.Teacher.Length > 0) _device.Upload<float>(batch.Teacher, _teacher);
    }

    private void Forward(TrainingBatch batch, float lossScale)
    {
        Upload(batch);
        var c = _config;
        int rows = batch.Rows, d = c.HiddenSize, v = c.VocabSize;
        Stage("forward: embedding");
        Launch(Typed("embed"), ((uint)rows, 1), Threads, _source.Pointer, Op(_layout.Embedding), Master(_layout.Soft), _residual[0].Pointer, d);
        for (int l = 0; l < c.LayerCount; l++) ForwardLayer(l, batch, _activations[RecomputeActivations ? 0 : l]);
        Stage("forward: classifier and loss");
        Launch(Typed("rms_norm"), ((uint)rows, 1), Threads, _residual[c.LayerCount].Pointer, Master(_layout.FinalNorm), _finalNormed.Pointer, _finalRstd.Pointer, d, (float)c.NormEpsilon);
        Linear(_finalNormed.Pointer, Op(_layout.Classifier), _logits.Pointer, rows, d, v, accumulate: false);
        Launch(Typed("loss_rows"), ((uint)rows, 1), 1024, _logits.Pointer, _targets.Pointer, _teacherRows.Pointer, _teacher.Pointer, _weights.Pointer,
            lossScale, _dLogits.Pointer, _rowLoss.Pointer, v);
    }

    /// <summary>Layer <paramref name="l"/>: residual[l] → residual[l + 1], keeping its activations in <paramref name="a"/>.</summary>
    private void ForwardLayer(int l, TrainingBatch batch, Activations a)
    {
        var c = _config;
        var w = _layout.Layers[l];
        int rows = batch.Rows, n = batch.Length, b = batch.Sequences, d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, f = c.IntermediateSize;
        int heads = c.HeadCount, hd = c.HeadDim;
        ulong x = _residual[l].Pointer, output = _residual[l + 1].Pointer;
        float eps = (float)c.NormEpsilon;
        Stage("forward: norms, q/k/v products");
        Launch(Typed("rms_norm"), ((uint)rows, 1), Threads, x, Master(w.AttentionNorm), a.AttentionNormed.Pointer, a.AttentionRstd.Pointer, d, eps);
        Linear(a.AttentionNormed.Pointer, Op(w.Query), _q.Pointer, rows, d, q, false);
        Linear(a.AttentionNormed.Pointer, Op(w.Key), _k.Pointer, rows, d, kv, false);
        Linear(a.AttentionNormed.Pointer, Op(w.Value), _v.Pointer, rows, d, kv, false);
        Stage("forward: attention");
        ulong? qb = w.QueryBias.Count > 0 ? Master(w.QueryBias) : null, kb = w.KeyBias.Count > 0 ? Master(w.KeyBias) : null, vb = w.ValueBias.Count > 0 ? Master(w.ValueBias) : null;
        Launch(Typed("rope_split"), ((uint)rows, 1), Threads, _q.Pointer, _k.Pointer, _v.Pointer, qb ?? 0UL, kb ?? 0UL, vb ?? 0UL,
            _positions.Pointer, _inverseFrequencies.Pointer, a.Qh.Pointer, a.Kh.Pointer, a.Vh.Pointer, n, heads, c.KvHeadCount, hd, Interleaved);
        // Scores, probabilities and the attended values per (sequence, head): [n, n] = scale·Q·Kᵀ, then P·V.
        long headStride = (long)n * hd, scoreStride = (long)n * n;
        int batchCount = b * heads;
        if (FlashAttention)
            Launch(FlashForward, (FlashTiles(n), (uint)batchCount), FlashThreads, a.Qh.Pointer, a.Kh.Pointer, a.Vh.Pointer, _firstVisible.Pointer,
                a.Attended.Pointer, a.Lse.Pointer, n, heads, ScaleLog2);
        else
        {
            _device.Gemm(false, true, n, n, hd, 1f / MathF.Sqrt(hd), Operand(a.Qh.Pointer, hd, headStride), Operand(a.Kh.Pointer, hd, headStride), 0f,
                F32(_scores.Pointer, n, scoreStride), batchCount);
            Launch(Typed("masked_softmax"), ((uint)(batchCount * n), 1), Threads, _scores.Pointer, a.Probabilities.Pointer, _firstVisible.Pointer, n, heads);
            _device.Gemm(false, false, n, hd, n, 1f, Operand(a.Probabilities.Pointer, n, scoreStride), Operand(a.Vh.Pointer, hd, headStride), 0f,
                F32(_heads.Pointer, hd, headStride), batchCount);
            Launch(Typed("merge_heads"), ((uint)rows, 1), Threads, _heads.Pointer, a.Attended.Pointer, n, heads, hd);
        }
        // mid = x + o(attended); out = mid + down(swiglu(gate(norm(mid)), up(norm(mid)))).
        Stage("forward: o product, feed-forward");
        _device.Copy(x, a.Mid.Pointer, (long)rows * d * 4);
        Linear(a.Attended.Pointer, Op(w.Output), a.Mid.Pointer, rows, q, d, accumulate: true);
        Launch(Typed("rms_norm"), ((uint)rows, 1), Threads, a.Mid.Pointer, Master(w.FfnNorm), a.FfnNormed.Pointer, a.FfnRstd.Pointer, d, eps);
        Linear(a.FfnNormed.Pointer, Op(w.Gate), a.Gate.Pointer, rows, d, f, false);
        Linear(a.FfnNormed.Pointer, Op(w.Up), a.Up.Pointer, rows, d, f, false);
        long hidden = (long)rows * f;
        Launch(Typed("swiglu"), (Blocks(hidden), 1), Threads, a.Gate.Pointer, a.Up.Pointer, a.Hidden.Pointer, hidden);
        _device.Copy(a.Mid.Pointer, output, (long)rows * d * 4);
        Linear(a.Hidden.Pointer, Op(w.Down), output, rows, f, d, accumulate: true);
    }

    private int Interleaved => _config.RopeStyle == RopeStyle.Interleaved ? 1 : 0;

    private static uint FlashTiles(int n) => (uint)((n + FlashTile - 1) / FlashTile);
    private float ScaleLog2 => (float)(1 / Math.Sqrt(_config.HeadDim) / Math.Log(2));


    private void Backward(TrainingBatch batch)
    {
        var c = _config;
        int rows = batch.Rows, n = batch.Length, b = batch.Sequences, d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, f = c.IntermediateSize, v = c.VocabSize;
        int heads = c.HeadCount, hd = c.HeadDim;
        // Classifier and final norm.
        Stage("backward: classifier");
        LinearBackward(_dLogits.Pointer, Op(_layout.Classifier), _finalNormed.Pointer, _dNormed.Pointer, Grad(_layout.Classifier), rows, d, v, accumulateDx: false);
        _device.Fill(_dx, 0);
        NormBackward(_residual[c.LayerCount].Pointer, _layout.FinalNorm, _finalRstd.Pointer, rows);
        long headStride = (long)n * hd, scoreStride = (long)n * n;
        int batchCount = b * heads;
        for (int l = c.LayerCount - 1; l >= 0; l--)
        {
            var w = _layout.Layers[l];
            var a = _activations[RecomputeActivations ? 0 : l];
            if (RecomputeActivations)
            {
                Stage("backward: recomputation");
                _recomputing = true;
                ForwardLayer(l, batch, a);
                _recomputing = false;
            }
            // Feed-forward.
            Stage("backward: feed-forward, o product");
            ToOperand(_dx.Pointer, _dxOperand.Pointer, (long)rows * d);
            LinearBackward(_dxOperand.Pointer, Op(w.Down), a.Hidden.Pointer, _dHidden.Pointer, Grad(w.Down), rows, f, d, false);
            long hidden = (long)rows * f;
            Launch(Typed("swiglu_backward"), (Blocks(hidden), 1), Threads, a.Gate.Pointer, a.Up.Pointer, _dHidden.Pointer, _dGateOperand.Pointer, _dUpOperand.Pointer, hidden);
            LinearBackward(_dGateOperand.Pointer, Op(w.Gate), a.FfnNormed.Pointer, _dNormed.Pointer, Grad(w.Gate), rows, d, f, false);
            LinearBackward(_dUpOperand.Pointer, Op(w.Up), a.FfnNormed.Pointer, _dNormed.Pointer, Grad(w.Up), rows, d, f, true);
            NormBackward(a.Mid.Pointer, w.FfnNorm, a.FfnRstd.Pointer, rows);   // _dx is now d(mid)
            // Attention.
            ToOperand(_dx.Pointer, _dxOperand.Pointer, (long)rows * d);
            LinearBackward(_dxOperand.Pointer, Op(w.Output), a.Attended.Pointer, _dAttended.Pointer, Grad(w.Output), rows, q, d, false);
            Stage("backward: attention");
            if (FlashAttention)
            {
                Launch("flash_prepare_bf16", ((uint)rows, 1), Threads, _dAttended.Pointer, a.Attended.Pointer, _dHeadsOperand.Pointer, _delta.Pointer, n, heads, hd);
                Launch(FlashBackwardKv, (FlashTiles(n), (uint)batchCount), FlashThreads, a.Qh.Pointer, a.Kh.Pointer, a.Vh.Pointer,
                    _dHeadsOperand.Pointer, a.Lse.Pointer, _delta.Pointer, _firstVisible.Pointer, _dkh.Pointer, _dvh.Pointer, n, heads, 1f / MathF.Sqrt(hd), ScaleLog2);
                Launch(FlashBackwardQ, (FlashTiles(n), (uint)batchCount), FlashThreads, a.Qh.Pointer, a.Kh.Pointer, a.Vh.Pointer,
                    _dHeadsOperand.Pointer, a.Lse.Pointer, _delta.Pointer, _firstVisible.Pointer, _dqh.Pointer, n, heads, 1f / MathF.Sqrt(hd), ScaleLog2);
            }
            else
            {
                Launch(Typed("split_heads"), ((uint)rows, 1), Threads, _dAttended.Pointer, _dHeadsOperand.Pointer, n, heads, hd);
                _device.Gemm(false, true, n, n, hd, 1f, Operand(_dHeadsOperand.Pointer, hd, headStride), Operand(a.Vh.Pointer, hd, headStride), 0f,
                    F32(_dProbabilities.Pointer, n, scoreStride), batchCount);
                _device.Gemm(true, false, n, hd, n, 1f, Operand(a.Probabilities.Pointer, n, scoreStride), Operand(_dHeadsOperand.Pointer, hd, headStride), 0f,
                    F32(_dvh.Pointer, hd, headStride), batchCount);
                Launch(Typed("softmax_backward"), ((uint)(batchCount * n), 1), Threads, a.Probabilities.Pointer, _dProbabilities.Pointer, _dScores.Pointer, n,
                    1f / MathF.Sqrt(hd));
                _device.Gemm(false, false, n, hd, n, 1f, Operand(_dScores.Pointer, n, scoreStride), Operand(a.Kh.Pointer, hd, headStride), 0f,
                    F32(_dqh.Pointer, hd, headStride), batchCount);
                _device.Gemm(true, false, n, hd, n, 1f, Operand(_dScores.Pointer, n, scoreStride), Operand(a.Qh.Pointer, hd, headStride), 0f,
                    F32(_dkh.Pointer, hd, headStride), batchCount);
            }
            Launch(Typed("rope_merge_backward"), ((uint)rows, 1), Threads, _dqh.Pointer, _dkh.Pointer, _dvh.Pointer, _positions.Pointer,
                _inverseFrequencies.Pointer, _dq.Pointer, _dk.Pointer, _dv.Pointer, _dqOperand.Pointer, _dkOperand.Pointer, _dvOperand.Pointer,
                n, heads, c.KvHeadCount, hd, Interleaved);
            Stage("backward: q/k/v products, norms");
            if (TrainWeights && w.QueryBias.Count > 0)
            {
                ColumnSum(_dq.Pointer, rows, q, Grad(w.QueryBias));
                ColumnSum(_dk.Pointer, rows, kv, Grad(w.KeyBias));
                ColumnSum(_dv.Pointer, rows, kv, Grad(w.ValueBias));
            }
            LinearBackward(_dqOperand.Pointer, Op(w.Query), a.AttentionNormed.Pointer, _dNormed.Pointer, Grad(w.Query), rows, d, q, false);
            LinearBackward(_dkOperand.Pointer, Op(w.Key), a.AttentionNormed.Pointer, _dNormed.Pointer, Grad(w.Key), rows, d, kv, true);
            LinearBackward(_dvOperand.Pointer, Op(w.Value), a.AttentionNormed.Pointer, _dNormed.Pointer, Grad(w.Value), rows, d, kv, true);
            NormBackward(_residual[l].Pointer, w.AttentionNorm, a.AttentionRstd.Pointer, rows);   // _dx is now d(layer input)
        }
        // Embedding rows and adapter rows: grouped by destination on the host, summed without atomics.
        Stage("backward: embedding");
        var (order, starts, destinations) = GroupRows(batch.Source, TrainWeights);
        if (destinations.Length == 0) return;
        _device.Upload<int>(order, _embedRows);
        _device.Upload<int>(starts, _embedStarts);
        _device.Upload<int>(destinations, _embedDestinations);
        Launch("embed_backward_f32", ((uint)destinations.Length, 1), Threads, _dx.Pointer, _embedRows.Pointer, _embedStarts.Pointer, _embedDestinations.Pointer,
            TrainWeights ? Grad(_layout.Embedding) : 0UL, _layout.SoftRows > 0 ? Grad(_layout.Soft) : 0UL, d);
    }

    /// <summary>dx += RMSNorm's input gradient for dy = <see cref="_dNormed"/>; the norm weight's gradient when training weights.</summary>
    private void NormBackward(ulong x, ParameterLayout.Tensor weight, ulong rstd, int rows)
    {
        int d = _config.HiddenSize;
        Launch("rms_norm_backward_f32", ((uint)rows, 1), Threads, x, Master(weight), rstd, _dNormed.Pointer, _dx.Pointer, TrainWeights ? _rowsScratch.Pointer : 0UL, d);
        if (TrainWeights) ColumnSum(_rowsScratch.Pointer, rows, d, Grad(weight));
    }

    /// <summary>
    /// Rows grouped by the parameter row they read: a counting sort by destination (token ids when
    /// <paramref name="tokens"/>, adapter rows always), rows in order within each group.
    /// </summary>
    internal static (int[] Rows, int[] Starts, int[] Destinations) GroupRows(int[] source, bool tokens)
    {
        var groups = new SortedDictionary<int, List<int>>();
        for (int r = 0; r < source.Length; r++)
        {
            if (source[r] >= 0 && !tokens) continue;
            if (!groups.TryGetValue(source[r], out var list)) groups[source[r]] = list = [];
            list.Add(r);
        }
        var rows = new List<int>(source.Length);
        var starts = new List<int> { 0 };
        foreach (var list in groups.Values)
        {
            rows.AddRange(list);
            starts.Add(rows.Count);
        }
        return ([.. rows], [.. starts], [.. groups.Keys]);
    }

    // ---- optimiser ----

    /// <summary>Sets the accumulated gradients to zero.</summary>
    public void ZeroGradients() => _device.Fill(_gradients, 0);

    /// <summary>
    /// One AdamW update of the trainable parameters (all weights and the adapter rows, or only the adapter rows) from the
    /// accumulated gradients times <paramref name="gradientScale"/>, clipped to <paramref name="clipNorm"/> (0: no
    /// clipping) on the device; then zeroes the gradients. Returns the gradient norm before clipping (waits for the GPU).
    /// </summary>
    public double Step(double learningRate, double clipNorm, double weightDecay, double gradientScale = 1, double beta1 = 0.9, double beta2 = 0.95, double epsilon = 1e-8)
    {
        Stage("optimiser");
        Launch("sum_squares_f32", (NormBlocks, 1), Threads, _gradients.Pointer, _trainableCount, _normPartials.Pointer);
        Launch("sum_all_f32", (1, 1), 1024, _normPartials.Pointer, (long)NormBlocks, _scalar.Pointer);
        _adamSteps++;
        float correction1 = (float)(1 - Math.Pow(beta1, _adamSteps)), correction2 = (float)(1 - Math.Pow(beta2, _adamSteps));
        foreach (var tensor in _layout.Trainable(TrainWeights))
            Launch("adamw_f32", (Blocks(tensor.Count), 1), Threads, Master(tensor), Grad(tensor), Moment(_firstMoments, tensor), Moment(_secondMoments, tensor),
                (long)tensor.Count, (float)learningRate, (float)beta1, (float)beta2, (float)epsilon, tensor.Decays ? (float)weightDecay : 0f,
                correction1, correction2, _scalar.Pointer, (float)clipNorm, (float)gradientScale);
        RefreshOperands(_trainableOffset, _trainableCount);
        var squared = new float[1];
        _device.Download<float>(_scalar, squared);
        ZeroGradients();
        return Math.Sqrt(squared[0]) * gradientScale;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var buffer in _owned) buffer.Dispose();
        _owned.Clear();
    }
}

/// <summary>How a <see cref="CudaTrainingModel"/> computes.</summary>
/// <param name="Operand">F32 (exact parity with the CPU) or BF16 (with f32 accumulation) matrix operands.</param>
/// <param name="TrainWeights">Full training (weights and adapter rows), or a frozen model with only adapter rows trained.</param>
/// <param name="RecomputeActivations">Keep only each layer's input; recompute the layer during the backward pass.</param>
/// <param name="FlashAttention">With bf16 operands and head dim 64: FlashAttention-2-style fused attention (no [n, n] matrices kept); else the probabilities are kept.</param>
public sealed record CudaTrainingOptions(DType Operand = DType.BF16, bool TrainWeights = true, bool RecomputeActivations = false, bool FlashAttention = true);
