using System.Collections.Concurrent;
using System.Diagnostics;
using KvPacket.Compute.Kv;
using KvPacket.Compute.Sampling;
using KvPacket.Core.Diagnostics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Serving;

/// <summary>
/// Continuous batching over one model. Each <see cref="Step"/> batches one decode token of every running request with
/// chunked prefill of requests still reading their prompt, under a token budget; new requests are admitted when a
/// batch slot and KV blocks are free, and only then acquire their documents' packets (a waiting request holds no
/// blocks); finished, cancelled or expired requests free their blocks at once. When a step needs more blocks than are
/// free, the most recently admitted request is preempted: its KV is dropped, the packets it acquired are given back,
/// and its prompt and generated tokens are recomputed later (packets are placed again). Requests of one
/// <see cref="PromptGroup"/> (the n choices of a prompt) compute the prompt once: a sibling waits for its leader's
/// prompt and takes those blocks, computing only the tail. Steps run on one thread
/// (<see cref="RunAsync"/>, or a caller of <see cref="Step"/>); <see cref="TrySubmit"/> may be called from any thread.
/// Buffers are sized once, so a steady decode step allocates nothing.
/// </summary>
public sealed class Scheduler
{
    private readonly IForwardBackend _model;
    private readonly ConcurrentQueue<ScheduledRequest> _incoming = new();
    private readonly ConcurrentQueue<Action<IForwardBackend>> _work = new();
    private readonly LinkedList<ScheduledRequest> _waiting = new();
    private readonly List<ScheduledRequest> _running;
    private readonly ScheduledRequest?[] _rowOwner;
    // One step's ragged batch, as IForwardBackend.Step takes it: a sequence and a length per chunk, the tokens (soft
    // tokens as negative ids, their embeddings in _soft), and a row of logits per chunk.
    private readonly int[] _chunkSequence, _chunkLength, _tokens;
    private readonly float[] _soft;
    private readonly float[] _logits;
    private readonly int[] _chosen;          // per chunk, the token the backend chose, when every row that samples lets it
    private readonly TokenDraw[] _draws;     // per chunk, what the backend is to choose
    private readonly int[] _chunkTokens;     // per running request, this step's work for the trace: −1 decode, n prefill tokens, 0 none
    private readonly int _budget, _maxRunning, _maxWaiting, _hidden;
    private readonly SemaphoreSlim _wake = new(0);
    private readonly List<(int[] Tokens, Packet Packet)> _prefixes = [];
    private int _prefixBlocks;
    private int _queued;
    private int _submitted;

    /// <summary>A scheduler for <paramref name="model"/>, on either backend.</summary>
    public Scheduler(IForwardBackend model, SchedulerOptions? options = null)
    {
        options ??= new SchedulerOptions();
        _model = model;
        _budget = options.TokenBudget > 0 ? Math.Min(options.TokenBudget, model.MaxStepTokens) : model.MaxStepTokens;
        _maxRunning = options.MaxRunning > 0 ? Math.Min(options.MaxRunning, model.MaxStepSequences) : model.MaxStepSequences;
        _maxWaiting = options.MaxWaiting;
        _hidden = model.Config.HiddenSize;
        _running = new List<ScheduledRequest>(_maxRunning);
        _rowOwner = new ScheduledRequest?[_maxRunning];
        _chunkSequence = new int[_maxRunning];
        _chunkLength = new int[_maxRunning];
        _tokens = new int[_budget];
        _soft = new float[(long)_budget * _hidden];
        _logits = new float[(long)_maxRunning * model.Config.VocabSize];
        _chosen = new int[_maxRunning];
        _draws = new TokenDraw[_maxRunning];
        _chunkTokens = new int[_maxRunning];
        SchedulerEventSource.Log.Watch(this);
    }

    /// <summary>
    /// Where steps and requests are recorded (null: nowhere): a span per step on <see cref="TraceTracks.Scheduler"/>, the
    /// step's stages on <see cref="TraceTracks.Stages"/> where the backend times them (<see cref="IForwardBackend.TimeStages"/>),
    /// and on each request's own row its wait in the queue, each prefill chunk and each decode step.
    /// </summary>
    public TraceRecorder? Trace
    {
        get => _trace;
        set
        {
            _trace = value;
            _model.TimeStages(value is not null);
        }
    }
    private TraceRecorder? _trace;

    /// <summary>Where the packets of requests' <see cref="PromptSegment.Document"/> segments come from, acquired on admission (set on the scheduler's thread).</summary>
    public Rag.IPacketSource? Packets { get; set; }

    /// <summary>Waiting requests whose packets the source is told of before each step (<see cref="Rag.IPacketSource.Prefetch"/>).</summary>
    private const int PrefetchRequests = 2;

    /// <summary>Requests running (admitted, holding KV).</summary>
    public int RunningCount => _running.Count;

    /// <summary>Requests waiting for admission.</summary>
    public int WaitingCount => Volatile.Read(ref _queued);

    /// <summary>Steps run so far.</summary>
    public long Steps { get; private set; }

    /// <summary>Requests preempted so far.</summary>
    public long Preemptions { get; private set; }

    /// <summary>Requests in the last step's batch.</summary>
    public int LastBatchSize { get; private set; }

    /// <summary>Queues <paramref name="request"/>; false when the waiting queue is full.</summary>
    /// <exception cref="ArgumentException">The request can never fit the model's context.</exception>
    public bool TrySubmit(ScheduledRequest request)
    {
        int positions = request.TotalPositions(_hidden);
        if (positions > _model.Config.MaxContextLength)
            throw new ArgumentException($"The prompt and {request.Limits.MaxTokens} new tokens take {positions} positions; the model's context is {_model.Config.MaxContextLength}.", nameof(request));
        if (Interlocked.Increment(ref _queued) > _maxWaiting)
        {
            Interlocked.Decrement(ref _queued);
            return false;
        }
        request.Track = TraceTracks.FirstRequest + Interlocked.Increment(ref _submitted) - 1;
        _incoming.Enqueue(request);
        _wake.Release();
        return true;
    }

    /// <summary>
    /// Runs <paramref name="work"/> on the scheduler's thread before the next step: the only safe place to use the model
    /// for anything else (building a packet, say) while the scheduler runs.
    /// </summary>
    public void Post(Action<IForwardBackend> work)
    {
        _work.Enqueue(work);
        _wake.Release();
    }

    /// <summary>Runs steps until <paramref name="stop"/> is cancelled and nothing is left, sleeping while idle.</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        while (true)
        {
            int computed;
            try { computed = Step(); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // A failed step leaves its requests' KV in an unknown state: end them with the error, keep serving the rest.
                foreach (var request in _running.ToArray()) Finish(request, FinishReason.Error, e.Message);
                computed = 0;
            }
            if (computed == 0)
            {
                if (stop.IsCancellationRequested && _running.Count == 0 && WaitingCount == 0)
                {
                    ReleasePrefixes();
                    return;
                }
                try { await _wake.WaitAsync(stop.IsCancellationRequested ? TimeSpan.FromMilliseconds(10) : Timeout.InfiniteTimeSpan, stop).ConfigureAwait(false); }
                catch (OperationCanceledException) { }
            }
        }
    }

    /// <summary>Runs posted work, takes in new requests, ends those whose caller gave up, then runs one batch. Returns the tokens computed.</summary>
    public int Step()
    {
        while (_work.TryDequeue(out var work)) work(_model);
        while (_incoming.TryDequeue(out var incoming)) _waiting.AddLast(incoming);
        EndAbandoned();
        Admit();
        if (_running.Count == 0) return 0;

        long stepStart = Stopwatch.GetTimestamp();
        if (_trace is not null) _model.TakeStageTimes();   // stages timed before the step (packets built on admission) are not its
        int rows = 0, tokens = 0, softRows = 0;
        // Decode tokens first: one each, so running requests keep their pace; then prompt chunks in admission order.
        for (int i = 0; i < _running.Count; i++)
        {
            var request = _running[i];
            if (!request.PromptDone) continue;
            _tokens[tokens++] = request.Generated[^1];
            _chunkSequence[rows] = request.Sequence!.Id;
            _chunkLength[rows] = 1;
            _rowOwner[rows++] = request;
            _chunkTokens[i] = -1;
        }
        for (int i = 0; i < _running.Count; i++)
        {
            var request = _running[i];
            if (request.PromptDone) continue;
            _chunkTokens[i] = 0;
            if (tokens >= _budget) continue;
            var (segment, offset) = request.NextChunk; // packets were placed in Admit: this is computed tokens
            int count = Math.Min(segment.ComputeLength(_hidden) - offset, _budget - tokens);
            if (segment is PromptSegment.Tokens t) t.Ids.AsSpan(offset, count).CopyTo(_tokens.AsSpan(tokens));
            else
            {
                ((PromptSegment.Soft)segment).Embeddings.AsSpan(offset * _hidden, count * _hidden).CopyTo(_soft.AsSpan(softRows * _hidden));
                for (int s = 0; s < count; s++) _tokens[tokens + s] = -1 - softRows++;
            }
            request.Advance(count, _hidden);
            _chunkTokens[i] = count;
            _chunkSequence[rows] = request.Sequence!.Id;
            _chunkLength[rows] = count;
            // Only the chunk that finishes the prompt needs its logits; the others' rows are computed and ignored.
            _rowOwner[rows++] = request.PromptDone ? request : null;
            tokens += count;
        }
        if (rows == 0) return 0;
        // While the step computes, the packet source may read the next waiting requests' packets ahead.
        if (Packets is { } source)
        {
            int asked = 0;
            for (var node = _waiting.First; node is not null && asked < PrefetchRequests; node = node.Next, asked++) node.Value.PrefetchPackets(source);
        }
        // When every request that takes a token this step chooses from the logits as they are (no bias, penalties or
        // log-probabilities), the backend chooses where the logits are (on a GPU they then never leave the device);
        // otherwise every row's logits come back for the samplers.
        bool onBackend = true;
        for (int row = 0; row < rows && onBackend; row++)
            onBackend = _rowOwner[row] is not { } owner || (owner.Sampler!.UsesPlainLogits && owner.Limits.LogProbs is null);
        if (onBackend)
        {
            for (int row = 0; row < rows; row++) _draws[row] = _rowOwner[row]?.Sampler!.NextDraw() ?? TokenDraw.Greedy;
            _model.StepDraw(_chunkSequence.AsSpan(0, rows), _chunkLength.AsSpan(0, rows), _tokens.AsSpan(0, tokens), _soft.AsSpan(0, softRows * _hidden),
                _draws.AsSpan(0, rows), _chosen);
        }
        else
            _model.Step(_chunkSequence.AsSpan(0, rows), _chunkLength.AsSpan(0, rows), _tokens.AsSpan(0, tokens), _soft.AsSpan(0, softRows * _hidden),
                _logits.AsSpan(0, rows * _model.Config.VocabSize));
        Steps++;
        LastBatchSize = rows;
        if (Trace is { } trace)
        {
            long stepEnd = Stopwatch.GetTimestamp();
            trace.Record("step", "scheduler", TraceTracks.Scheduler, stepStart, stepEnd, "tokens", tokens, "requests", rows);
            long at = stepStart;
            foreach (var (stage, ms) in _model.TakeStageTimes())
            {
                long end = at + (long)(ms * Stopwatch.Frequency / 1e3);
                trace.Record(stage, "stages", TraceTracks.Stages, at, end, "us", (long)(ms * 1e3));
                at = end;
            }
            for (int i = 0; i < _running.Count; i++)
                if (_chunkTokens[i] != 0)
                    trace.Record(_chunkTokens[i] < 0 ? "decode" : "prefill", "request", _running[i].Track, stepStart, stepEnd, "tokens", Math.Max(1, _chunkTokens[i]));
        }

        int vocab = _model.Config.VocabSize;
        for (int row = 0; row < rows; row++)
        {
            var request = _rowOwner[row];
            if (request is null) continue;
            var logits = _logits.AsSpan(row * vocab, vocab);
            int token = onBackend ? _chosen[row] : request.Sampler!.Sample(logits);
            if (request.FirstToken == 0) request.FirstToken = Stopwatch.GetTimestamp();
            bool done = request.Append(token, out var reason);
            request.Sink.OnToken(token, request.Limits.LogProbs is int top ? TokenLogProbs.Of(logits, token, top) : null);
            if (done) Finish(request, reason);
        }
        return tokens;
    }

    /// <summary>
    /// Admits waiting requests while a batch slot and the blocks for their first chunk are free, places the packets at
    /// the front of every prompt (no blocks needed), then preempts the newest requests until this step's blocks fit.
    /// </summary>
    private void Admit()
    {
        while (_waiting.First is { } node && _running.Count < _maxRunning)
        {
            var request = node.Value;
            // A sibling whose leader is computing the shared prompt waits for it: then it computes only the tail.
            if (request.Group?.Leader is { } computing && computing != request && !computing.PromptDone && _running.Contains(computing)) break;
            if (_model.KvBlocks.FreeBlockCount < BlocksFor(Math.Min(_budget, request.TotalPositions(_hidden))) + _running.Count) break;
            // With others running, a request whose packets the store begins to read waits one step: the reads overlap
            // that step instead of stalling it.
            if (_running.Count > 0 && Packets is { } source && request.PrefetchPackets(source)) break;
            try { request.AcquirePackets(Packets); }
            catch (KvCacheExhaustedException) when (_running.Count > 0) { break; }   // running requests will give blocks back
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                _waiting.RemoveFirst();
                Interlocked.Decrement(ref _queued);
                Finish(request, FinishReason.Error, $"its packets could not be had: {e.Message}");
                continue;
            }
            _waiting.RemoveFirst();
            Interlocked.Decrement(ref _queued);
            request.Sequence ??= new BackendSequence(_model, _model.CreateSequence());
            if (request.Group is { } group) JoinGroup(request, group);
            request.Sampler ??= new Sampler(request.Limits.Sampling, _model.Config.VocabSize);
            if (request.Admitted == 0)
            {
                request.Admitted = Stopwatch.GetTimestamp();
                Trace?.Record("queued", "request", request.Track, request.Submitted, request.Admitted);
            }
            _running.Add(request);
        }
        foreach (var request in _running)
        {
            if (request.PromptDone) continue;
            if (request.LeadingPrefix is { } prefix && CachedPrefix(prefix) is { } packet) request.PlacePrefix(packet);
            request.PlacePackets();
        }
        while (_running.Count > 0 && _model.KvBlocks.FreeBlockCount < StepDemand())
        {
            if (_running.Count > 1) Preempt(_running[^1]);
            else Finish(_running[0], FinishReason.Error, $"the KV cache ({_model.KvBlocks.BlockCount} blocks) cannot hold this request's next step");
        }
    }

    /// <summary>
    /// The packet of a prompt prefix (BOS, a system prompt) that packets follow, built the first time it is seen and kept
    /// (the last <see cref="MaxPrefixes"/> prefixes), as a server with prefix caching keeps it: a RAG request then computes
    /// only its query. Null when the cache has no room for it now: the prefix is computed with the request.
    /// </summary>
    private Packet? CachedPrefix(int[] tokens)
    {
        for (int i = 0; i < _prefixes.Count; i++)
            if (_prefixes[i].Tokens.AsSpan().SequenceEqual(tokens))
            {
                var hit = _prefixes[i];
                _prefixes.RemoveAt(i);
                _prefixes.Insert(0, hit);
                return hit.Packet;
            }
        Packet packet;
        try { packet = _model.BuildPacket(tokens); }
        catch (KvCacheExhaustedException) { return null; }
        if (_prefixes.Count == MaxPrefixes)
        {
            _prefixes[^1].Packet.Dispose();   // sequences placed on it keep its blocks until they end
            _prefixes.RemoveAt(_prefixes.Count - 1);
        }
        _prefixes.Insert(0, ([.. tokens], packet));
        Volatile.Write(ref _prefixBlocks, _prefixes.Sum(p => p.Packet.Blocks.Count));
        return packet;
    }

    /// <summary>Prompt prefixes kept as packets.</summary>
    private const int MaxPrefixes = 4;

    /// <summary>KV blocks the cached prompt prefixes hold (in use while the scheduler lives, not leaked); any thread may read it.</summary>
    public int PrefixBlocks => Volatile.Read(ref _prefixBlocks);

    /// <summary>Lets go of the cached prompt prefixes; on the scheduler's thread (<see cref="RunAsync"/> does it when it ends).</summary>
    public void ReleasePrefixes()
    {
        foreach (var (_, packet) in _prefixes) packet.Dispose();
        _prefixes.Clear();
        Volatile.Write(ref _prefixBlocks, 0);
    }

    /// <summary>
    /// Gives a newly admitted request of a group its leader's prompt KV, when the leader is running with the same prompt
    /// computed; otherwise the request leads the group from now on.
    /// </summary>
    private void JoinGroup(ScheduledRequest request, PromptGroup group)
    {
        if (group.Leader is { } leader && leader != request && leader.PromptDone && leader.Sequence is { } source && _running.Contains(leader)
            && request.Sequence!.Length == 0 && request.SamePromptAs(leader))
        {
            int shared = request.Sequence.SharePrefix(source, leader.PromptSpan(_hidden) - 1);
            if (shared > 0) request.SkipTo(shared, _hidden, leader.PrefixPlaced);
            return;
        }
        group.Leader = request;
    }

    private int BlocksFor(int tokens) => (tokens + _model.KvBlocks.Layout.BlockSize - 1) / _model.KvBlocks.Layout.BlockSize;

    /// <summary>Blocks the next step will take: a decode token for each decoding request, then prompt chunks in order within the budget.</summary>
    private int StepDemand()
    {
        int demand = 0, budget = _budget;
        foreach (var request in _running)
            if (request.PromptDone)
            {
                demand += request.Sequence!.BlocksNeededFor(1);
                budget--;
            }
        foreach (var request in _running)
        {
            if (request.PromptDone || budget <= 0) continue;
            var (segment, offset) = request.NextChunk;
            int chunk = Math.Min(segment.ComputeLength(_hidden) - offset, budget);
            demand += request.Sequence!.BlocksNeededFor(chunk);
            budget -= chunk;
        }
        return demand;
    }

    private void Preempt(ScheduledRequest request)
    {
        _running.Remove(request);
        request.Sequence!.Dispose();
        request.Sequence = null;
        request.Restart();
        _waiting.AddFirst(request);
        Interlocked.Increment(ref _queued);
        Preemptions++;
    }

    private void EndAbandoned()
    {
        var now = DateTimeOffset.UtcNow;
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var request = _running[i];
            if (request.Cancellation.IsCancellationRequested) Finish(request, FinishReason.Cancelled);
            else if (request.Limits.Deadline < now) Finish(request, FinishReason.Deadline);
        }
        for (var node = _waiting.First; node is not null;)
        {
            var next = node.Next;
            var request = node.Value;
            var reason = request.Cancellation.IsCancellationRequested ? FinishReason.Cancelled : request.Limits.Deadline < now ? FinishReason.Deadline : (FinishReason?)null;
            if (reason is FinishReason r)
            {
                _waiting.Remove(node);
                Interlocked.Decrement(ref _queued);
                Finish(request, r);
            }
            node = next;
        }
    }

    private void Finish(ScheduledRequest request, FinishReason reason, string? error = null)
    {
        _running.Remove(request);
        request.Sequence?.Dispose();
        request.Sequence = null;
        request.ReleasePackets();
        long now = Stopwatch.GetTimestamp();
        double Seconds(long from, long to) => from == 0 || to == 0 ? 0 : (to - from) / (double)Stopwatch.Frequency;
        request.Sink.OnFinished(new GenerationSummary(request.ComputedPromptTokens, request.PacketTokens, request.GeneratedCount,
            Seconds(request.Submitted, request.Admitted == 0 ? now : request.Admitted), Seconds(request.Submitted, request.FirstToken),
            Seconds(request.Submitted, now), request.Preemptions, reason, error));
    }
}
