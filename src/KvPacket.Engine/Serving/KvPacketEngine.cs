using System.Collections.Concurrent;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Model;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Serving;

/// <summary>
/// The in-process API: one model served by a continuous-batching <see cref="Scheduler"/> on its own thread, documents
/// added once as packets, and requests streamed token by token. Thread-safe for any number of concurrent callers.
/// <code>
/// await using var engine = await KvPacketEngine.LoadAsync("model-dir");
/// var doc = await engine.AddPacketAsync(documentTokens);
/// await foreach (var e in engine.GenerateAsync(new EngineRequest { Packets = [doc.Id], Prompt = query }))
///     if (!e.IsFinal) Console.Write(e.Token);
/// </code>
/// </summary>
public sealed class KvPacketEngine : IAsyncDisposable
{
    private readonly Checkpoint _checkpoint;
    private readonly IForwardBackend _model;
    private readonly Scheduler _scheduler;
    private readonly KvPacketEngineOptions _options;
    private readonly ConcurrentDictionary<string, PacketHandle> _packets = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private IPacketSource? _source;
    private volatile bool _closing;

    private KvPacketEngine(Checkpoint checkpoint, KvPacketEngineOptions options)
    {
        _checkpoint = checkpoint;
        _options = options;
        _model = options.Backend?.Invoke(checkpoint) ?? new Transformer(checkpoint, options.Model);
        _scheduler = new Scheduler(_model, options.Scheduler);
        _scheduler.Post(model => _scheduler.Packets = _source = options.Packets?.Invoke(model) ?? new BuiltPackets(model));
        _loop = Task.Factory.StartNew(() => _scheduler.RunAsync(_stop.Token), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <summary>Loads the checkpoint at <paramref name="modelPath"/> (and the tokenizer beside it, if any) and starts serving it.</summary>
    public static Task<KvPacketEngine> LoadAsync(string modelPath, KvPacketEngineOptions? options = null, CancellationToken cancellation = default) =>
        Task.Run(() =>
        {
            var engine = Create(CheckpointLoader.Load(modelPath), options);
            engine.Tokenizer = TokenizerLoader.TryLoadNextTo(modelPath);
            engine.ChatTemplate = engine.Tokenizer is null ? null : ChatTemplate.TryLoadNextTo(modelPath);
            return engine;
        }, cancellation);

    /// <summary>Serves an already loaded checkpoint (the engine takes ownership of it).</summary>
    public static KvPacketEngine Create(Checkpoint checkpoint, KvPacketEngineOptions? options = null) => new(checkpoint, options ?? new KvPacketEngineOptions());

    /// <summary>The model's tokenizer, when one was found beside it (or set by the host).</summary>
    public ITokenizer? Tokenizer { get; set; }

    /// <summary>The model's chat template, when its tokenizer_config.json has one (or set by the host); <see cref="KvPacketChatClient"/> needs it.</summary>
    public ChatTemplate? ChatTemplate { get; set; }

    /// <summary>
    /// The mode of a request with documents that names none: the one the engine's adapter is for (kvlink when it has link
    /// tokens, kvpacket when it has a header or trailer), else naive.
    /// </summary>
    public RagMode DefaultPacketMode => _options.Adapter switch
    {
        { Links.Length: > 0 } => RagMode.KvLink,
        { Header.Length: > 0 } or { Trailer.Length: > 0 } => RagMode.KvPacket,
        _ => RagMode.Naive,
    };

    /// <summary>The serving mode called <paramref name="name"/> (full, naive, kvpacket or kvlink, any case); false for any other name.</summary>
    public static bool TryParseMode(string name, out RagMode mode)
    {
        (bool known, mode) = name.ToLowerInvariant() switch
        {
            "full" => (true, RagMode.Full), "naive" => (true, RagMode.Naive), "kvpacket" => (true, RagMode.KvPacket), "kvlink" => (true, RagMode.KvLink),
            _ => (false, default),
        };
        return known;
    }

    /// <summary>The model's config.</summary>
    public ModelConfig Config => _checkpoint.Config;

    /// <summary>The scheduler (for its counters).</summary>
    public Scheduler Scheduler => _scheduler;

    /// <summary>KV blocks in use (requests' and resident packets').</summary>
    public int KvBlocksInUse => _model.KvBlocks.BlockCount - _model.KvBlocks.FreeBlockCount;

    /// <summary>Total KV blocks.</summary>
    public int KvBlockCount => _model.KvBlocks.BlockCount;

    /// <summary>Packets added so far.</summary>
    public IReadOnlyCollection<PacketHandle> Packets => (IReadOnlyCollection<PacketHandle>)_packets.Values;

    /// <summary>
    /// Encodes <paramref name="document"/> as a packet (plain, and with the adapter when the engine has one), on the
    /// scheduler's thread between steps, and returns its handle. Adding the same document again returns the same id.
    /// </summary>
    public Task<PacketHandle> AddPacketAsync(int[] document, CancellationToken cancellation = default)
    {
        ThrowIfClosing();
        if (document.Length == 0) throw new ArgumentException("A packet needs at least one token.", nameof(document));
        if (document.Length > Config.MaxContextLength) throw new ArgumentException($"A {document.Length}-token document exceeds the model's context of {Config.MaxContextLength}.", nameof(document));
        string id = IdOf(document);
        if (_packets.TryGetValue(id, out var known)) return Task.FromResult(known);
        var done = new TaskCompletionSource<PacketHandle>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = cancellation.Register(() => done.TrySetCanceled(cancellation));
        _scheduler.Post(model =>
        {
            try
            {
                long bytes;
                using (var plain = _source!.Acquire(document, null)) bytes = plain.Blocks.Count * model.KvBlocks.Layout.BlockBytes;
                if (_options.Adapter is { } adapter)
                    using (var adapted = _source.Acquire(document, adapter)) bytes += adapted.Blocks.Count * model.KvBlocks.Layout.BlockBytes;
                done.TrySetResult(_packets.GetOrAdd(id, new PacketHandle(id, document, _options.Adapter is not null, bytes)));
            }
            catch (Exception e) { done.TrySetException(e); }
        });
        return done.Task;
    }

    /// <summary>Tokenizes <paramref name="text"/> with the model's tokenizer and adds it as a packet (see <see cref="AddPacketAsync(int[], CancellationToken)"/>).</summary>
    /// <exception cref="InvalidOperationException">The engine has no tokenizer.</exception>
    public Task<PacketHandle> AddPacketAsync(string text, CancellationToken cancellation = default) =>
        AddPacketAsync((Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer: add the document as token ids.")).Encode(text), cancellation);

    /// <summary>
    /// Records <paramref name="document"/> as a known packet without encoding it now — for packets a durable packet
    /// source already holds (after a restart, say); it is loaded when a request first uses it.
    /// </summary>
    public PacketHandle Register(int[] document, long kvBytes) =>
        _packets.GetOrAdd(IdOf(document), id => new PacketHandle(id, document, _options.Adapter is not null, kvBytes));

    /// <summary>The handle of packet <paramref name="id"/>, if added.</summary>
    public bool TryGetPacket(string id, out PacketHandle handle) => _packets.TryGetValue(id, out handle!);

    /// <summary>Forgets packet <paramref name="id"/> (requests already running keep their references).</summary>
    public bool RemovePacket(string id) => _packets.TryRemove(id, out _);

    /// <summary>
    /// Runs <paramref name="request"/> and streams its tokens, then one final event with the summary. Cancelling
    /// <paramref name="cancellation"/> (or abandoning the enumeration) ends the request and frees its KV.
    /// </summary>
    /// <exception cref="KeyNotFoundException">A named packet was never added.</exception>
    /// <exception cref="OverloadedException">The waiting queue is full.</exception>
    public async IAsyncEnumerable<GenerationEvent> GenerateAsync(EngineRequest request, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        ThrowIfClosing();
        Validate(request);
        using var abandon = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var sink = new ChannelSink();
        var scheduled = new ScheduledRequest(Segments(request), request.Limits, sink, Config.EosTokenIds, abandon.Token) { Group = request.Group };
        if (!_scheduler.TrySubmit(scheduled)) throw new OverloadedException("the engine's waiting queue is full; try again later.");
        try
        {
            await foreach (var e in sink.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                yield return e;
                if (e.IsFinal) yield break;
            }
        }
        finally { abandon.Cancel(); } // an abandoned enumeration ends the request at the next step
    }

    private void Validate(EngineRequest request)
    {
        if (request.Prompt.Length == 0) throw new ArgumentException("The prompt needs at least one token.", nameof(request));
        if (request.Mode is RagMode.Epic or RagMode.CacheBlend)
            throw new NotSupportedException($"{request.Mode} mode recomputes document tokens outside the batch; the serving engine runs full, naive, kvpacket and kvlink.");
        foreach (string id in request.Packets)
            if (!_packets.ContainsKey(id)) throw new KeyNotFoundException($"no packet '{id}': add it first.");
        // A mode runs as named or not at all: kvpacket with an adapter of links only would be naive under another name.
        var adapter = _options.Adapter;
        if (request.Mode is RagMode.KvPacket && (adapter?.Header.Length ?? 0) + (adapter?.Trailer.Length ?? 0) == 0)
            throw new InvalidOperationException(adapter is null ? "kvpacket mode needs an engine adapter; this engine has none."
                : $"kvpacket mode needs an adapter with header or trailer tokens; this engine's adapter '{adapter.Id}' has only link tokens (use kvlink).");
        if (request.Mode is RagMode.KvLink && (adapter?.Links.Length ?? 0) == 0)
            throw new InvalidOperationException(adapter is null ? "kvlink mode needs an adapter with link tokens; this engine has none."
                : $"kvlink mode needs an adapter with link tokens; this engine's adapter '{adapter.Id}' has none (use kvpacket).");
        int vocab = Config.VocabSize;
        request.Limits.Sampling.Validate(vocab);   // here, not first on the scheduler's thread when the sampler is made
        if (request.Limits.LogProbs is < 0 or > TokenLogProbs.MaxTop) throw new ArgumentOutOfRangeException(nameof(request), $"log-probabilities with 0 to {TokenLogProbs.MaxTop} alternatives, not {request.Limits.LogProbs}.");
        foreach (var tokens in request.Documents.Append(request.Prompt).Append(request.Prefix))
            foreach (int token in tokens)
                if ((uint)token >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(request), $"token {token} is outside the vocabulary (0..{vocab - 1}).");
    }

    /// <summary>The request's prompt as scheduler segments: documents' packets are acquired when the scheduler admits it.</summary>
    private List<PromptSegment> Segments(EngineRequest request)
    {
        var segments = new List<PromptSegment>();
        if (request.Prefix.Length > 0) segments.Add(new PromptSegment.Tokens(request.Prefix));
        foreach (int[] document in request.Packets.Select(id => _packets[id].Document).Concat(request.Documents))
        {
            switch (request.Mode)
            {
                case RagMode.Full:
                    segments.Add(new PromptSegment.Tokens(document));
                    break;
                case RagMode.Naive:
                    segments.Add(new PromptSegment.Document(document, null));
                    break;
                case RagMode.KvPacket:
                    segments.Add(new PromptSegment.Document(document, _options.Adapter));
                    break;
                case RagMode.KvLink:
                    segments.Add(new PromptSegment.Document(document, null));
                    segments.Add(new PromptSegment.Soft(_options.Adapter!.Links));
                    break;
            }
        }
        segments.Add(new PromptSegment.Tokens(request.Prompt));
        return segments;
    }

    /// <summary>The id a packet of <paramref name="document"/> has in every engine: a hash of its tokens.</summary>
    public static string IdOf(ReadOnlySpan<int> document) =>
        Convert.ToHexString(XxHash128.Hash(MemoryMarshal.AsBytes(document))).ToLowerInvariant();

    private void ThrowIfClosing()
    {
        if (_closing) throw new ObjectDisposedException(nameof(KvPacketEngine), "the engine is shutting down.");
    }

    /// <summary>Stops taking requests, lets running and waiting ones finish, then releases the model.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_closing) return;
        _closing = true;
        _stop.Cancel();
        await _loop.ConfigureAwait(false);
        _source?.Dispose();
        _model.Dispose();
        _checkpoint.Dispose();
        _stop.Dispose();
    }

    /// <summary>Forwards a request's tokens into a channel the caller's enumeration reads.</summary>
    private sealed class ChannelSink : IGenerationSink
    {
        private readonly Channel<GenerationEvent> _channel = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

        public ChannelReader<GenerationEvent> Reader => _channel.Reader;

        public void OnToken(int token, TokenLogProbs? logProbs) => _channel.Writer.TryWrite(new GenerationEvent(token, null, logProbs));

        public void OnFinished(GenerationSummary summary)
        {
            _channel.Writer.TryWrite(new GenerationEvent(-1, summary));
            _channel.Writer.TryComplete();
        }
    }
}
