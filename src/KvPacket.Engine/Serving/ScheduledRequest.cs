using System.Diagnostics;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Sampling;

namespace KvPacket.Engine.Serving;

/// <summary>
/// A request's state inside the <see cref="Scheduler"/>: its prompt segments and how far it got through them, its
/// sequence in the KV cache while running, its sampler, and what it has generated. Owned by the scheduler's thread.
/// </summary>
public sealed class ScheduledRequest
{
    private readonly List<PromptSegment> _segments;
    private readonly IReadOnlyList<int> _stopTokens;
    private readonly int[] _generated;
    private readonly int _promptSegments;
    private readonly PromptSegment.Document?[] _acquired;   // per prompt segment: the document whose packet the scheduler acquired there
    private bool _prefetchAsked;                             // the packet source was told of the documents while this waited
    private int _segment, _offset;

    /// <summary>A request for <paramref name="segments"/>, reporting to <paramref name="sink"/>.</summary>
    public ScheduledRequest(IEnumerable<PromptSegment> segments, GenerationLimits limits, IGenerationSink sink, IReadOnlyList<int> defaultStops,
        CancellationToken cancellation = default)
    {
        _segments = [.. segments];
        if (_segments.Count == 0) throw new ArgumentException("A request needs a prompt.", nameof(segments));
        _promptSegments = _segments.Count;
        _acquired = new PromptSegment.Document?[_promptSegments];
        if (_segments.Any(segment => segment is PromptSegment.Tokens { Ids.Length: 0 } or PromptSegment.Soft { Embeddings.Length: 0 }))
            throw new ArgumentException("A prompt segment of tokens or soft tokens is empty.", nameof(segments));
        if (_segments[^1] is PromptSegment.Placed or PromptSegment.Document)
            throw new ArgumentException("A prompt must end with computed tokens (the query): the first generated token needs their logits.", nameof(segments));
        if (limits.MaxTokens < 1) throw new ArgumentOutOfRangeException(nameof(limits), $"max tokens must be at least 1, not {limits.MaxTokens}.");
        Limits = limits;
        Sink = sink;
        Cancellation = cancellation;
        _stopTokens = limits.StopTokens ?? defaultStops;
        _generated = new int[limits.MaxTokens];
        Submitted = Stopwatch.GetTimestamp();
    }

    /// <summary>Generation limits.</summary>
    public GenerationLimits Limits { get; }

    /// <summary>Where tokens go.</summary>
    public IGenerationSink Sink { get; }

    /// <summary>The caller's cancellation.</summary>
    public CancellationToken Cancellation { get; }

    internal long Submitted { get; }
    internal long Admitted { get; set; }
    internal long FirstToken { get; set; }
    internal int Preemptions { get; set; }
    internal BackendSequence? Sequence { get; set; }
    internal Sampler? Sampler { get; set; }
    internal int ComputedPromptTokens { get; set; }
    internal int PacketTokens { get; set; }
    internal PromptGroup? Group { get; init; }
    internal int Track { get; set; }

    /// <summary>Positions the prompt takes (its segments as submitted).</summary>
    internal int PromptSpan(int hidden) => _segments.Take(_promptSegments).Sum(s => s.PositionSpan(hidden));

    /// <summary>Whether <paramref name="other"/> was submitted with the same prompt: the same tokens, soft tokens and packet blocks in the same order.</summary>
    internal bool SamePromptAs(ScheduledRequest other) => _promptSegments == other._promptSegments && _segments.Take(_promptSegments).Zip(other._segments).All(pair => pair switch
    {
        (PromptSegment.Tokens a, PromptSegment.Tokens b) => a.Ids.AsSpan().SequenceEqual(b.Ids),
        (PromptSegment.Soft a, PromptSegment.Soft b) => a.Embeddings.AsSpan().SequenceEqual(b.Embeddings),
        (PromptSegment.Placed a, PromptSegment.Placed b) => a.Packet.PositionSpan == b.Packet.PositionSpan && a.Packet.Blocks.SequenceEqual(b.Packet.Blocks),
        (PromptSegment.Document a, PromptSegment.Document b) => a.Ids.AsSpan().SequenceEqual(b.Ids) && a.Adapter == b.Adapter,
        _ => false,
    });

    /// <summary>
    /// Moves the cursor to <paramref name="position"/> of a prompt whose KV up to there was shared from a sibling: the
    /// packets before it count as placed (the leading tokens too when the sibling placed them from the prefix cache,
    /// <paramref name="prefixPlaced"/>), and computing resumes inside the segment holding it.
    /// </summary>
    internal void SkipTo(int position, int hidden, bool prefixPlaced)
    {
        int start = 0;
        for (_segment = 0; _segment < _promptSegments; _segment++)
        {
            var segment = _segments[_segment];
            int span = segment.PositionSpan(hidden);
            if (position < start + span)
            {
                if (segment is PromptSegment.Placed) throw new InvalidOperationException($"position {position} falls inside a placed packet; a shared prefix ends before computed tokens");
                _offset = position - start;
                return;
            }
            if (segment is PromptSegment.Placed placed) PacketTokens += placed.Packet.Length;
            else if (_segment == 0 && prefixPlaced)
            {
                PacketTokens += span;
                PrefixPlaced = true;
            }
            start += span;
        }
        throw new InvalidOperationException($"position {position} is past the prompt ({start} positions); a sibling computes at least the prompt's last token");
    }

    /// <summary>Tokens generated so far.</summary>
    public int GeneratedCount { get; private set; }

    /// <summary>Tokens generated so far, oldest first.</summary>
    public ReadOnlySpan<int> Generated => _generated.AsSpan(0, GeneratedCount);

    /// <summary>Whether every prompt segment has been placed or computed (the request is decoding).</summary>
    internal bool PromptDone => _segment == _segments.Count;

    /// <summary>Positions the whole prompt and the generation can take: what the sequence may grow to.</summary>
    internal int TotalPositions(int hidden) => _segments.Sum(s => s.PositionSpan(hidden)) + Limits.MaxTokens;

    /// <summary>
    /// The prompt's leading computed tokens when the sequence is still empty and a packet comes right after them (a RAG
    /// prompt's BOS or system prompt): their KV depends on nothing before them, so a cached packet of them places what
    /// computing them would write — and what follows a packet starts a block of its own either way.
    /// </summary>
    internal int[]? LeadingPrefix => _segment == 0 && _offset == 0 && Sequence is { Length: 0 } && _promptSegments > 1
        && _segments[0] is PromptSegment.Tokens prefix && _segments[1] is PromptSegment.Placed ? prefix.Ids : null;

    /// <summary>Places <paramref name="prefix"/>, a packet of <see cref="LeadingPrefix"/>'s tokens, instead of computing them.</summary>
    internal void PlacePrefix(Packet prefix)
    {
        Sequence!.AppendPacket(prefix);
        PacketTokens += prefix.Length;
        PrefixPlaced = true;
        _segment++;
    }

    /// <summary>Whether the prompt's leading tokens were placed from the prefix cache (they count as packet tokens).</summary>
    internal bool PrefixPlaced { get; private set; }

    /// <summary>Places packet segments at the front of what remains (they cost no compute).</summary>
    internal void PlacePackets()
    {
        while (_segment < _segments.Count && _segments[_segment] is PromptSegment.Placed placed)
        {
            Sequence!.AppendPacket(placed.Packet);
            PacketTokens += placed.Packet.Length;
            _segment++;
        }
    }

    /// <summary>The next prompt segment to compute and where in it the next chunk starts.</summary>
    internal (PromptSegment Segment, int Offset) NextChunk => (_segments[_segment], _offset);

    /// <summary>Records that <paramref name="count"/> tokens of the current segment were computed.</summary>
    internal void Advance(int count, int hidden)
    {
        _offset += count;
        ComputedPromptTokens += count;
        if (_offset == _segments[_segment].ComputeLength(hidden))
        {
            _segment++;
            _offset = 0;
        }
    }

    /// <summary>Records a generated token; true when it ends the request (stop token or sequence, or the limit).</summary>
    internal bool Append(int token, out FinishReason reason)
    {
        _generated[GeneratedCount++] = token;
        reason = FinishReason.Stop;
        for (int i = 0; i < _stopTokens.Count; i++)
            if (_stopTokens[i] == token) return true;
        foreach (int[] stop in Limits.StopSequences)
            if (stop.Length > 0 && GeneratedCount >= stop.Length && Generated[^stop.Length..].SequenceEqual(stop)) return true;
        reason = FinishReason.Length;
        return GeneratedCount == Limits.MaxTokens;
    }

    /// <summary>
    /// Acquires the packets of the prompt's <see cref="PromptSegment.Document"/> segments from <paramref name="source"/>
    /// (on admission). All or nothing: when one cannot be had — the KV cache is full, say — those acquired are let go
    /// and the exception is rethrown, the request unchanged.
    /// </summary>
    internal void AcquirePackets(Rag.IPacketSource? source)
    {
        try
        {
            for (int i = 0; i < _promptSegments; i++)
            {
                if (_segments[i] is not PromptSegment.Document document) continue;
                var packet = (source ?? throw new InvalidOperationException("the scheduler has no packet source for the prompt's documents.")).Acquire(document.Ids, document.Adapter);
                _segments[i] = new PromptSegment.Placed(packet);
                _acquired[i] = document;
            }
        }
        catch
        {
            ReturnAcquiredPackets();
            throw;
        }
    }

    /// <summary>
    /// Tells <paramref name="source"/> once, while this request waits, which documents it will acquire (a store can read
    /// them ahead); returns whether that began reads an acquire would now wait for.
    /// </summary>
    internal bool PrefetchPackets(Rag.IPacketSource source)
    {
        if (_prefetchAsked) return false;
        _prefetchAsked = true;
        bool reading = false;
        for (int i = 0; i < _promptSegments; i++)
            if (_segments[i] is PromptSegment.Document document) reading |= source.Prefetch(document.Ids, document.Adapter);
        return reading;
    }

    /// <summary>Lets go of the packets <see cref="AcquirePackets"/> took, the segments documents again (a preempted request holds no blocks while it waits).</summary>
    internal void ReturnAcquiredPackets()
    {
        for (int i = 0; i < _promptSegments; i++)
        {
            if (_acquired[i] is not { } document) continue;
            ((PromptSegment.Placed)_segments[i]).Packet.Dispose();
            _segments[i] = document;
            _acquired[i] = null;
        }
    }

    /// <summary>
    /// After preemption: the KV is gone, so what was computed — prompt and generated tokens — is computed again.
    /// Packets are placed again: those the request was given stay held (shared in the cache), those it acquired itself
    /// are let go until it is admitted again.
    /// </summary>
    internal void Restart()
    {
        ReturnAcquiredPackets();
        _prefetchAsked = false;
        _segments.RemoveRange(_promptSegments, _segments.Count - _promptSegments);
        if (GeneratedCount > 0) _segments.Add(new PromptSegment.Tokens(_generated[..GeneratedCount]));
        _segment = 0;
        _offset = 0;
        ComputedPromptTokens = 0;
        PacketTokens = 0;
        PrefixPlaced = false;
        Preemptions++;
    }

    /// <summary>Releases the packet references the segments hold.</summary>
    internal void ReleasePackets()
    {
        foreach (var segment in _segments)
            if (segment is PromptSegment.Placed placed) placed.Packet.Dispose();
    }
}
