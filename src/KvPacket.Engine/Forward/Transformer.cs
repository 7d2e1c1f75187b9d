using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using KvPacket.Compute.Cpu;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Sampling;
using KvPacket.Compute.Specialised;
using KvPacket.Compute.Threading;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;

namespace KvPacket.Engine.Forward;

/// <summary>
/// The Llama/Qwen2 forward pass on the CPU over a paged KV cache, for a ragged batch of sequences.
/// All activations live in native buffers sized for <see cref="TransformerOptions.MaxBatchTokens"/>, so a step
/// allocates nothing. One step at a time per instance. As an <see cref="IForwardBackend"/> it holds sequences by handle
/// as well; the scheduler and training use <see cref="Sequence"/> objects directly.
/// </summary>
[SkipLocalsInit]
public sealed unsafe class Transformer : IForwardBackend
{
    private readonly Checkpoint _model;
    private readonly ModelConfig _config;
    private readonly WorkerPool _workers;
    private readonly bool _ownsWorkers;
    private readonly MatMul _matMul;
    private readonly PagedAttention _attention;
    private readonly RotaryEmbedding _rope;
    private readonly AttentionBatch _attentionBatch;
    private readonly ForwardBatch _stepBatch;
    private readonly List<Sequence?> _handles = [];
    private HostTokenDraws? _draws;
    private readonly LayerVectors[] _layerVectors;
    private readonly float[] _finalNorm;
    private readonly NativeBuffer<float> _x, _xb, _q, _k, _v, _att, _gate, _up, _ropeCos, _ropeSin;

    /// <summary>Prepares <paramref name="model"/> for inference. The checkpoint must outlive this instance.</summary>
    public Transformer(Checkpoint model, TransformerOptions? options = null)
    {
        options ??= new TransformerOptions();
        _model = model;
        _config = model.Config;
        Options = options;
        var c = _config;
        _ownsWorkers = options.Threads > 0 && options.Threads != WorkerPool.Shared.ThreadCount;
        _workers = _ownsWorkers ? new WorkerPool(options.Threads) : WorkerPool.Shared;

        var layout = KvCacheLayout.For(c, options.KvType, options.KvBlockSize);
        KvPool = new KvBlockPool(layout, (options.KvCacheTokens + layout.BlockSize - 1) / layout.BlockSize);
        Spec = options.SpecialisedKernels ? ModelSpec.For(c) : null;
        _rope = new RotaryEmbedding(c, Spec is null ? default : Spec.InverseFrequencies);
        _matMul = new MatMul(_workers, Math.Max(Math.Max(c.HiddenSize, c.IntermediateSize), c.QueryDim));
        _attention = new PagedAttention(KvPool, _workers, _rope, c.HeadCount, c.MaxContextLength, options.MaxBatchTokens, Spec?.HeadKernels);
        _attentionBatch = new AttentionBatch(options.MaxBatchTokens, options.MaxBatchSequences);
        _stepBatch = new ForwardBatch(options.MaxBatchTokens, options.MaxBatchSequences, c.HiddenSize);

        _layerVectors = model.Layers.Select(l => new LayerVectors(
            ReadVector(l.AttentionNorm), ReadVector(l.FfnNorm), ReadVector(l.QueryBias), ReadVector(l.KeyBias), ReadVector(l.ValueBias))).ToArray();
        _finalNorm = ReadVector(model.FinalNorm);

        int t = options.MaxBatchTokens;
        _x = new NativeBuffer<float>((long)t * c.HiddenSize);
        _xb = new NativeBuffer<float>((long)t * Math.Max(c.HiddenSize, c.QueryDim));
        _q = new NativeBuffer<float>((long)t * c.QueryDim);
        _k = new NativeBuffer<float>((long)t * c.KvDim);
        _v = new NativeBuffer<float>((long)t * c.KvDim);
        _att = new NativeBuffer<float>((long)t * c.QueryDim);
        _gate = new NativeBuffer<float>((long)t * c.IntermediateSize);
        _up = new NativeBuffer<float>((long)t * c.IntermediateSize);
        _ropeCos = new NativeBuffer<float>((long)t * _rope.PairCount);
        _ropeSin = new NativeBuffer<float>((long)t * _rope.PairCount);
    }

    /// <summary>The checkpoint this runs.</summary>
    public Checkpoint Model => _model;

    /// <summary>The model's config.</summary>
    public ModelConfig Config => _config;

    /// <summary>The model card spec whose generated kernels this instance runs, or null for the generic kernels.</summary>
    public ModelSpec? Spec { get; }

    /// <summary>The options this instance was built with.</summary>
    public TransformerOptions Options { get; }

    /// <summary>Where each forward stage's time is added up (null: not timed).</summary>
    public ForwardProfile? Profile { get; set; }

    /// <summary>The KV cache's blocks.</summary>
    public KvBlockPool KvPool { get; }

    /// <inheritdoc />
    public KvBlocks KvBlocks => KvPool;

    /// <inheritdoc />
    public int MaxSequenceLength => _config.MaxContextLength;

    /// <summary>Threads the kernels run on.</summary>
    public int ThreadCount => _workers.ThreadCount;

    /// <summary>Starts an empty sequence in this model's KV cache.</summary>
    public Sequence CreateSequence() => new(KvPool, _config.MaxContextLength);

    /// <inheritdoc />
    int IForwardBackend.CreateSequence()
    {
        int id = _handles.IndexOf(null);
        if (id < 0) { id = _handles.Count; _handles.Add(null); }
        _handles[id] = CreateSequence();
        return id;
    }

    /// <inheritdoc />
    public void ReleaseSequence(int sequence)
    {
        Handle(sequence).Dispose();
        _handles[sequence] = null;
    }

    /// <inheritdoc />
    public int SequenceLength(int sequence) => Handle(sequence).Length;

    /// <summary>The sequence behind handle <paramref name="sequence"/>.</summary>
    public Sequence Handle(int sequence) =>
        (uint)sequence < (uint)_handles.Count && _handles[sequence] is { } s ? s : throw new ArgumentException($"No sequence {sequence}.", nameof(sequence));

    /// <inheritdoc />
    public int MaxStepTokens => Options.MaxBatchTokens;

    /// <inheritdoc />
    public int MaxStepSequences => Options.MaxBatchSequences;

    /// <inheritdoc />
    public void Step(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, Span<float> logits)
    {
        _stepBatch.Clear();
        int offset = 0, hidden = _config.HiddenSize;
        for (int chunk = 0; chunk < sequences.Length; chunk++)
        {
            if (offset + lengths[chunk] > tokens.Length) throw new ArgumentException($"The chunk lengths add up to more than the {tokens.Length} tokens.", nameof(lengths));
            var ids = tokens.Slice(offset, lengths[chunk]);
            if (ids.IsEmpty || ids[0] >= 0) _stepBatch.Add(Handle(sequences[chunk]), ids);
            else
            {
                int row = -1 - ids[0];
                for (int t = 1; t < ids.Length; t++)
                    if (ids[t] != ids[0] - t) throw new ArgumentException($"Chunk {chunk} mixes tokens and soft tokens, or its soft tokens are not consecutive rows.", nameof(tokens));
                if ((row + ids.Length) * hidden > soft.Length) throw new ArgumentOutOfRangeException(nameof(tokens), $"Soft token row {row + ids.Length - 1} is past the {soft.Length / hidden} rows given.");
                _stepBatch.AddSoftTokens(Handle(sequences[chunk]), soft.Slice(row * hidden, ids.Length * hidden));
            }
            offset += lengths[chunk];
        }
        if (offset != tokens.Length) throw new ArgumentException($"The chunk lengths add up to {offset}, not {tokens.Length} tokens.", nameof(lengths));
        Forward(_stepBatch, logits);
    }

    /// <inheritdoc />
    public void StepDraw(ReadOnlySpan<int> sequences, ReadOnlySpan<int> lengths, ReadOnlySpan<int> tokens, ReadOnlySpan<float> soft, ReadOnlySpan<TokenDraw> draws,
        Span<int> next)
    {
        _draws ??= new HostTokenDraws(Options.MaxBatchSequences, _config.VocabSize);
        Step(sequences, lengths, tokens, soft, _draws.Logits(sequences.Length));
        _draws.Choose(draws[..sequences.Length], next);
    }

    /// <inheritdoc />
    public bool TimeStages(bool on)
    {
        Profile = on ? Profile ?? new ForwardProfile() : null;
        return true;
    }

    /// <inheritdoc />
    public IReadOnlyDictionary<string, double> TakeStageTimes() =>
        Profile?.TakeMilliseconds() ?? (IReadOnlyDictionary<string, double>)System.Collections.Frozen.FrozenDictionary<string, double>.Empty;

    /// <inheritdoc />
    public int BlocksNeededFor(int sequence, int tokens) => Handle(sequence).BlocksNeededFor(tokens);

    /// <inheritdoc />
    public int SharePrefix(int sequence, int source, int upTo) => Handle(sequence).SharePrefix(Handle(source), upTo);

    /// <inheritdoc />
    public void Prefill(int sequence, ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken) => Prefill(Handle(sequence), tokens, logits, which);

    /// <inheritdoc />
    public void PrefillSoft(int sequence, ReadOnlySpan<float> embeddings, Span<float> logits) => PrefillSoft(Handle(sequence), embeddings, logits);

    /// <inheritdoc />
    public void AppendPacket(int sequence, Packet packet, int skip = 0, int keyOrigin = -1) => Handle(sequence).AppendPacket(packet, skip, keyOrigin);

    /// <inheritdoc />
    public void PlacePacketCopy(int sequence, Packet packet) => PlacePacketCopy(Handle(sequence), packet);

    /// <inheritdoc />
    public Packet ImportPacket(Packet packet) => CopyPacket(packet, KvPool);

    /// <inheritdoc />
    public Packet ExportPacket(Packet packet, KvBlockPool host) => CopyPacket(packet, host);

    /// <summary><paramref name="packet"/> in <paramref name="target"/>: shared when it already lives there, else copied block by block.</summary>
    private static Packet CopyPacket(Packet packet, KvBlockPool target)
    {
        if (ReferenceEquals(packet.Pool, target)) return packet.Share();
        var source = packet.Pool as KvBlockPool ?? throw new ArgumentException("The packet lives in GPU memory; the CPU backend copies host packets only.", nameof(packet));
        return packet.CopyTo(target, (from, to) => source.BlockBytes(from).CopyTo(target.BlockBytes(to)));
    }

    /// <inheritdoc />
    public int BlendRecompute(int sequence, ReadOnlySpan<int> tokens, int firstPosition, double fraction) => BlendRecompute(Handle(sequence), tokens, firstPosition, fraction);

    /// <summary>
    /// Runs one step: appends every chunk's tokens to its sequence and writes logits ([rows, vocab], in chunk
    /// order, per <see cref="ForwardBatch.LogitsOf"/>) into <paramref name="logits"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Forward(ForwardBatch batch, Span<float> logits)
    {
        var c = _config;
        int tokens = batch.TokenCount, hidden = c.HiddenSize;
        if (tokens == 0) return;
        if (tokens > Options.MaxBatchTokens) throw new ArgumentException($"The batch has {tokens} tokens; this model was prepared for {Options.MaxBatchTokens}.", nameof(batch));
        if (batch.ChunkCount > Options.MaxBatchSequences) throw new ArgumentException($"The batch has {batch.ChunkCount} sequences; this model was prepared for {Options.MaxBatchSequences}.", nameof(batch));
        if (logits.Length < (long)batch.LogitRowCount * c.VocabSize) throw new ArgumentException($"Logits need {batch.LogitRowCount} × {c.VocabSize} floats.", nameof(logits));
        foreach (int token in batch.Tokens)
            if (token >= c.VocabSize) throw new ArgumentOutOfRangeException(nameof(batch), $"Token id {token} is outside the vocabulary of {c.VocabSize}.");

        PlaceTokens(batch);
        var profile = Profile;
        long clock = profile is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();

        // Embedding: x[t] = E[token_t], or the given vector for a soft token.
        for (int t = 0; t < tokens; t++)
        {
            if (batch.Tokens[t] == ForwardBatch.SoftToken) batch.Embeddings(t).CopyTo(Row(_x, t, hidden));
            else _model.TokenEmbedding.ReadRow(batch.Tokens[t], Row(_x, t, hidden));
        }
        if (profile is not null) profile.Lap(ForwardProfile.Stage.Embedding, clock);

        RunLayers(tokens, 0, c.LayerCount);
        if (profile is not null) clock = System.Diagnostics.Stopwatch.GetTimestamp();

        // Final norm of the rows that want logits, packed together, then the classifier.
        int rows = 0;
        for (int chunk = 0; chunk < batch.ChunkCount; chunk++)
        {
            int start = batch.StartOf(chunk), length = batch.LengthOf(chunk);
            int first = batch.LogitsOf(chunk) == LogitsFor.AllTokens ? start : start + length - 1;
            for (int t = first; t < start + length; t++)
                RmsNorm.Apply(Row(_x, t, hidden), _finalNorm, (float)c.NormEpsilon, Row(_xb, rows++, hidden));
        }
        if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Norm, clock);
        fixed (float* output = logits) _matMul.Multiply(_xb.Pointer, rows, _model.Classifier, output);
        if (profile is not null)
        {
            profile.Lap(ForwardProfile.Stage.Classifier, clock);
            profile.Steps++;
        }

        for (int chunk = 0; chunk < batch.ChunkCount; chunk++) batch.SequenceOf(chunk).Length += batch.LengthOf(chunk);
    }

    /// <summary>Places a private, key-realigned copy of <paramref name="packet"/> in <paramref name="sequence"/>, ready for <see cref="BlendRecompute(Sequence, ReadOnlySpan{int}, int, double)"/>.</summary>
    public void PlacePacketCopy(Sequence sequence, Packet packet) => sequence.AppendPacketCopy(packet, _rope);

    /// <summary>
    /// CacheBlend-style selective recompute of the document tokens at positions [<paramref name="firstPosition"/>, …) of
    /// <paramref name="sequence"/> (placed with <see cref="PlacePacketCopy(Sequence, Packet)"/>): layer 0 is recomputed for all of them in
    /// context; their layer-1 K and V are compared with the stored ones, and only the <paramref name="fraction"/> that
    /// deviate most go on through the remaining layers, overwriting their K and V. Returns how many went on.
    /// </summary>
    public int BlendRecompute(Sequence sequence, ReadOnlySpan<int> tokens, int firstPosition, double fraction)
    {
        if (!(fraction is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "The recompute fraction must be in [0, 1].");
        var c = _config;
        int recomputed = 0;
        for (int offset = 0; offset < tokens.Length; offset += Options.MaxBatchTokens)
        {
            int n = Math.Min(Options.MaxBatchTokens, tokens.Length - offset);
            var placement = _attentionBatch;
            placement.TokenCount = n;
            placement.Tables[0] = sequence.Entries;
            placement.TableLengths[0] = sequence.EntryCount;
            for (int i = 0; i < n; i++)
            {
                int position = firstPosition + offset + i, token = tokens[offset + i];
                if ((uint)token >= (uint)c.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), $"Token id {token} is outside the vocabulary of {c.VocabSize}.");
                (placement.Blocks[i], placement.Slots[i]) = sequence.Locate(position);
                placement.Positions[i] = position;
                placement.Sequences[i] = 0;
                _rope.Angles(position, Row(_ropeCos, i, _rope.PairCount), Row(_ropeSin, i, _rope.PairCount));
                _model.TokenEmbedding.ReadRow(token, Row(_x, i, c.HiddenSize));
            }
            RunLayers(n, 0, 1);
            if (c.LayerCount == 1) continue;

            int keep = (int)Math.Ceiling(fraction * n);
            var selected = SelectDeviating(n, keep);
            for (int j = 0; j < selected.Length; j++)
            {
                int i = selected[j];
                if (i == j) continue;
                Row(_x, i, c.HiddenSize).CopyTo(Row(_x, j, c.HiddenSize));
                Row(_ropeCos, i, _rope.PairCount).CopyTo(Row(_ropeCos, j, _rope.PairCount));
                Row(_ropeSin, i, _rope.PairCount).CopyTo(Row(_ropeSin, j, _rope.PairCount));
                placement.Positions[j] = placement.Positions[i];
                placement.Blocks[j] = placement.Blocks[i];
                placement.Slots[j] = placement.Slots[i];
            }
            placement.TokenCount = selected.Length;
            RunLayers(selected.Length, 1, c.LayerCount);
            recomputed += selected.Length;
        }
        return recomputed;
    }

    /// <summary>The <paramref name="keep"/> tokens (indices, ascending) whose recomputed layer-1 K and V differ most from the stored ones.</summary>
    private int[] SelectDeviating(int tokens, int keep)
    {
        var c = _config;
        var layer = _model.Layers[1];
        var vectors = _layerVectors[1];
        for (int t = 0; t < tokens; t++) RmsNorm.Apply(Row(_x, t, c.HiddenSize), vectors.AttentionNorm, (float)c.NormEpsilon, Row(_xb, t, c.HiddenSize));
        _matMul.Multiply(_xb.Pointer, tokens, layer.Key, _k.Pointer, layer.Value, _v.Pointer);
        AddBias(tokens, vectors.KeyBias, _k);
        AddBias(tokens, vectors.ValueBias, _v);
        var layout = KvPool.Layout;
        var stored = new float[c.HeadDim];
        var deviation = new double[tokens];
        for (int t = 0; t < tokens; t++)
        {
            _rope.Rotate(Row(_k, t, c.KvDim), c.KvHeadCount, Row(_ropeCos, t, _rope.PairCount), Row(_ropeSin, t, _rope.PairCount));
            int block = _attentionBatch.Blocks[t], slot = _attentionBatch.Slots[t];
            for (int g = 0; g < c.KvHeadCount; g++)
            {
                long offset = layout.Offset(g, slot);
                deviation[t] += Distance(KvPool.Key(block, 1), offset, Row(_k, t, c.KvDim).Slice(g * c.HeadDim, c.HeadDim), stored)
                              + Distance(KvPool.Value(block, 1), offset, Row(_v, t, c.KvDim).Slice(g * c.HeadDim, c.HeadDim), stored);
            }
        }
        return Enumerable.Range(0, tokens).OrderByDescending(t => deviation[t]).ThenBy(t => t).Take(keep).Order().ToArray();
    }

    private double Distance(byte* plane, long offset, ReadOnlySpan<float> recomputed, float[] stored)
    {
        if (KvPool.Layout.Type == DType.F16) ElementConversion.HalfToSingle(new ReadOnlySpan<Half>((Half*)plane + offset, stored.Length), stored);
        else new ReadOnlySpan<float>((float*)plane + offset, stored.Length).CopyTo(stored);
        double sum = 0;
        for (int i = 0; i < stored.Length; i++) sum += (recomputed[i] - stored[i]) * (double)(recomputed[i] - stored[i]);
        return sum;
    }

    /// <summary>Runs layers [<paramref name="fromLayer"/>, <paramref name="toLayer"/>) on the first <paramref name="tokens"/> rows of the residual stream, as placed in the attention batch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void RunLayers(int tokens, int fromLayer, int toLayer)
    {
        var c = _config;
        int hidden = c.HiddenSize;
        var profile = Profile;
        long clock = profile is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
        for (int l = fromLayer; l < toLayer; l++)
        {
            var layer = _model.Layers[l];
            var vectors = _layerVectors[l];

            // Attention block: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x)); the query's rope is applied inside attention.
            for (int t = 0; t < tokens; t++) RmsNorm.Apply(Row(_x, t, hidden), vectors.AttentionNorm, (float)c.NormEpsilon, Row(_xb, t, hidden));
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Norm, clock);
            _matMul.Multiply(_xb.Pointer, tokens, layer.Query, _q.Pointer, layer.Key, _k.Pointer, layer.Value, _v.Pointer);
            AddBias(tokens, vectors.QueryBias, _q);
            AddBias(tokens, vectors.KeyBias, _k);
            AddBias(tokens, vectors.ValueBias, _v);
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.QueryKeyValue, clock);
            for (int t = 0; t < tokens; t++) _rope.Rotate(Row(_k, t, c.KvDim), c.KvHeadCount, Row(_ropeCos, t, _rope.PairCount), Row(_ropeSin, t, _rope.PairCount));
            _attention.Append(l, _attentionBatch, _k.Pointer, _v.Pointer);
            _attention.Attend(l, _attentionBatch, _q.Pointer, _att.Pointer, _ropeCos.Pointer, _ropeSin.Pointer); // rotates q per block offset
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Attention, clock);
            _matMul.Multiply(_att.Pointer, tokens, layer.Output, _xb.Pointer);
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Output, clock);
            TensorPrimitives.Add(_x.Slice(0, tokens * hidden), _xb.Slice(0, tokens * hidden), _x.Slice(0, tokens * hidden));
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Residual, clock);

            // Feed-forward block: x += W2 · (silu(W1·norm(x)) ⊙ W3·norm(x)).
            for (int t = 0; t < tokens; t++) RmsNorm.Apply(Row(_x, t, hidden), vectors.FfnNorm, (float)c.NormEpsilon, Row(_xb, t, hidden));
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Norm, clock);
            _matMul.Multiply(_xb.Pointer, tokens, layer.Gate, _gate.Pointer, layer.Up, _up.Pointer);
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.GateUp, clock);
            SwiGlu.Apply(_gate.Slice(0, tokens * c.IntermediateSize), _up.Slice(0, tokens * c.IntermediateSize));
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.SwiGlu, clock);
            _matMul.Multiply(_gate.Pointer, tokens, layer.Down, _xb.Pointer);
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Down, clock);
            TensorPrimitives.Add(_x.Slice(0, tokens * hidden), _xb.Slice(0, tokens * hidden), _x.Slice(0, tokens * hidden));
            if (profile is not null) clock = profile.Lap(ForwardProfile.Stage.Residual, clock);
        }

    }

    /// <summary>Finds each new token's block slot (taking fresh blocks), fills the attention batch and the RoPE angles.</summary>
    private void PlaceTokens(ForwardBatch batch)
    {
        // Check every chunk before touching any sequence, so a rejected step leaves them all as they were.
        for (int chunk = 0; chunk < batch.ChunkCount; chunk++)
        {
            var sequence = batch.SequenceOf(chunk);
            if (sequence.Length + batch.LengthOf(chunk) > sequence.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(batch), $"A sequence of {sequence.Length + batch.LengthOf(chunk)} tokens exceeds the model's context of {sequence.MaxLength}.");
        }

        var placement = _attentionBatch;
        placement.TokenCount = batch.TokenCount;
        for (int chunk = 0; chunk < batch.ChunkCount; chunk++)
        {
            var sequence = batch.SequenceOf(chunk);
            int start = batch.StartOf(chunk), length = batch.LengthOf(chunk);
            for (int i = 0; i < length; i++)
            {
                int t = start + i, position = sequence.Length + i;
                (placement.Blocks[t], placement.Slots[t]) = sequence.SlotFor(position);
                placement.Positions[t] = position;
                placement.Sequences[t] = chunk;
                _rope.Angles(position, Row(_ropeCos, t, _rope.PairCount), Row(_ropeSin, t, _rope.PairCount));
            }
            placement.Tables[chunk] = sequence.Entries;
            placement.TableLengths[chunk] = sequence.EntryCount;
        }
    }

    /// <summary>
    /// Computes <paramref name="tokens"/> alone from position 0 (in chunks of the batch size), between optional header
    /// and trailer soft tokens ([n, hidden] embeddings, KV Packet's adapters), and freezes the result as a packet:
    /// shared, immutable KV blocks any sequence can place with <see cref="Sequence.AppendPacket"/>. With
    /// <paramref name="keep"/> below 1 the packet is token-pruned: only that fraction of the document's tokens, those that
    /// received the most attention (summed over layers, heads and later tokens) while it was built, keep their KV; header
    /// and trailer tokens are always kept.
    /// </summary>
    public Packet BuildPacket(ReadOnlySpan<int> tokens, ReadOnlySpan<float> header = default, ReadOnlySpan<float> trailer = default, double keep = 1.0)
    {
        if (tokens.IsEmpty) throw new ArgumentException("A packet needs at least one token.", nameof(tokens));
        if (keep is <= 0 or > 1) throw new ArgumentOutOfRangeException(nameof(keep), $"Keep a fraction in (0, 1] of the tokens, not {keep}.");
        using var sequence = CreateSequence();
        var logits = new float[Config.VocabSize];
        bool prune = keep < 1;
        if (prune) _attention.BeginAttentionMass();
        if (!header.IsEmpty) PrefillSoft(sequence, header, logits);
        Prefill(sequence, tokens, logits);
        if (!trailer.IsEmpty) PrefillSoft(sequence, trailer, logits);
        int length = sequence.Length;
        if (!prune) return new Packet(KvPool, sequence.DetachBlocks(), length);

        var mass = new float[length];
        _attention.EndAttentionMass(mass);
        int headerCount = header.Length / Config.HiddenSize;
        var kept = TokenPruning.Select(mass, headerCount, tokens.Length, keep);
        int[] built = sequence.DetachBlocks();
        try { return new Packet(KvPool, TokenPruning.Gather(KvPool, built, kept), kept.Length, length); }
        finally { foreach (int block in built) KvPool.Release(block); }
    }

    /// <summary>
    /// Appends <paramref name="tokens"/> to <paramref name="sequence"/> in steps of at most MaxBatchTokens. With
    /// <see cref="LogitsFor.LastToken"/> <paramref name="logits"/> receives the last token's row; with
    /// <see cref="LogitsFor.AllTokens"/> one row per token.
    /// </summary>
    public void Prefill(Sequence sequence, ReadOnlySpan<int> tokens, Span<float> logits, LogitsFor which = LogitsFor.LastToken)
    {
        int vocab = Config.VocabSize;
        for (int offset = 0; offset < tokens.Length; offset += Options.MaxBatchTokens)
        {
            int n = Math.Min(Options.MaxBatchTokens, tokens.Length - offset);
            _stepBatch.Clear();
            _stepBatch.Add(sequence, tokens.Slice(offset, n), which);
            Forward(_stepBatch, which == LogitsFor.AllTokens ? logits[(offset * vocab)..] : logits);
        }
    }

    /// <summary>Appends soft tokens ([n, hidden] input embeddings) to <paramref name="sequence"/>; <paramref name="logits"/> receives the last one's row.</summary>
    public void PrefillSoft(Sequence sequence, ReadOnlySpan<float> embeddings, Span<float> logits)
    {
        int chunk = Options.MaxBatchTokens * Config.HiddenSize;
        for (int offset = 0; offset < embeddings.Length; offset += chunk)
        {
            _stepBatch.Clear();
            _stepBatch.AddSoftTokens(sequence, embeddings.Slice(offset, Math.Min(chunk, embeddings.Length - offset)));
            Forward(_stepBatch, logits);
        }
    }

    private static void AddBias(int tokens, float[] bias, NativeBuffer<float> output)
    {
        for (int t = 0; t < tokens; t++) TensorPrimitives.Add(Row(output, t, bias.Length), bias, Row(output, t, bias.Length));
    }

    private static Span<float> Row(NativeBuffer<float> buffer, int row, int width) => buffer.Slice((long)row * width, width);

    /// <summary>A layer's norm weights and (possibly empty) q/k/v biases, widened to f32 once.</summary>
    private sealed record LayerVectors(float[] AttentionNorm, float[] FfnNorm, float[] QueryBias, float[] KeyBias, float[] ValueBias);

    private static float[] ReadVector(in WeightTensor tensor)
    {
        if (!tensor.IsPresent) return [];
        var values = new float[tensor.Columns];
        tensor.ReadRow(0, values);
        return values;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var sequence in _handles) sequence?.Dispose();
        _handles.Clear();
        foreach (var buffer in new[] { _x, _xb, _q, _k, _v, _att, _gate, _up, _ropeCos, _ropeSin }) buffer.Dispose();
        _matMul.Dispose();
        _attention.Dispose();
        KvPool.Dispose();
        if (_ownsWorkers) _workers.Dispose();
    }
}
