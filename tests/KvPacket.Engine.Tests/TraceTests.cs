using System.Diagnostics.Tracing;
using System.Text.Json;
using KvPacket.Core.Checkpoints;
using KvPacket.Core.Diagnostics;
using KvPacket.Core.Memory;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;
using Xunit;

namespace KvPacket.Tests;

/// <summary>Profiling runs: the scheduler's trace in Chrome / Perfetto's format, parsed back, and its live counters.</summary>
public class TraceTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    [Fact]
    public async Task A_serving_trace_has_every_step_and_each_requests_queue_prefill_and_decode_on_its_own_row()
    {
        var options = new KvPacketEngineOptions { Model = new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096, MaxBatchTokens = 32, MaxBatchSequences = 8 } };
        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(Stories), options);
        var trace = new TraceRecorder(trackNames: TraceTracks.Names);
        engine.Scheduler.Trace = trace;
        var packet = await engine.AddPacketAsync(ReferenceModels.RandomTokens(30, 1));
        var summaries = await Task.WhenAll(Enumerable.Range(0, 3).Select(async i =>
        {
            GenerationSummary? summary = null;
            await foreach (var e in engine.GenerateAsync(new EngineRequest
            {
                Prefix = [1], Packets = [packet.Id], Prompt = ReferenceModels.RandomTokens(40 + i, (ulong)i), Mode = RagMode.Naive,
                Limits = new GenerationLimits { MaxTokens = 5 + i, StopTokens = [] },
            }))
                if (e.IsFinal) summary = e.Summary;
            return summary!;
        }));

        using var buffer = new MemoryStream();
        trace.WriteChromeTrace(buffer);
        AssertTimelineDrawsEverySpan(buffer.ToArray());
        var root = JsonDocument.Parse(buffer.ToArray()).RootElement;
        Assert.Equal(0, root.GetProperty("droppedSpans").GetInt64());
        var events = root.GetProperty("traceEvents").EnumerateArray().ToList();
        Assert.Contains(events, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("args").GetProperty("name").GetString() == "scheduler");
        var spans = events.Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.All(spans, e => Assert.True(e.GetProperty("ts").GetDouble() >= 0 && e.GetProperty("dur").GetDouble() >= 0));
        var steps = spans.Where(e => e.GetProperty("name").GetString() == "step").ToList();
        Assert.Equal(engine.Scheduler.Steps, steps.Count);
        Assert.All(steps, e => Assert.Equal(TraceTracks.Scheduler, e.GetProperty("tid").GetInt32()));
        Assert.All(steps, e => Assert.InRange(e.GetProperty("args").GetProperty("tokens").GetInt32(), 1, 32));

        // The steps' stages (the CPU backend's clock): every forward stage there, their time within the steps' time.
        var stages = spans.Where(e => e.GetProperty("tid").GetInt32() == TraceTracks.Stages).ToList();
        var stageNames = stages.Select(e => e.GetProperty("name").GetString()).ToHashSet();
        Assert.Superset(new HashSet<string?> { "Embedding", "Norm", "QueryKeyValue", "Attention", "Output", "GateUp", "Down", "Classifier" }, stageNames);
        Assert.True(stages.Sum(e => e.GetProperty("dur").GetDouble()) <= steps.Sum(e => e.GetProperty("dur").GetDouble()));
        Assert.Contains(events, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("args").GetProperty("name").GetString() == "stages");

        // Each request's row: one wait in the queue, prefill chunks adding up to the tokens it computed, one decode per token after the first.
        var rows = spans.Where(e => e.GetProperty("tid").GetInt32() >= TraceTracks.FirstRequest).GroupBy(e => e.GetProperty("tid").GetInt32()).ToList();
        Assert.Equal(3, rows.Count);
        foreach (var row in rows)
        {
            int Tokens(string name) => row.Where(e => e.GetProperty("name").GetString() == name).Sum(e => e.GetProperty("args").GetProperty("tokens").GetInt32());
            Assert.Single(row, e => e.GetProperty("name").GetString() == "queued");
            int generated = Tokens("decode") + 1;
            var summary = Assert.Single(summaries, s => s.PromptTokens == Tokens("prefill") && s.GeneratedTokens == generated);
            Assert.Equal(1 + 30, summary.PacketTokens);   // the BOS prefix, placed from the scheduler's prefix cache, and the packet
        }

        // Recording allocates nothing.
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) trace.Record("probe", "test", 9, i, i + 1, "n", i);
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void Generate_traces_its_prefill_and_each_decode_step_with_its_position()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 256 });
        var trace = new TraceRecorder(trackNames: "generate");
        new Engine.Generation.Generator(model) { Trace = trace }.Generate([1, 50, 60], new Engine.Generation.GenerationOptions { MaxNewTokens = 10, StopTokens = [] });
        using var buffer = new MemoryStream();
        trace.WriteChromeTrace(buffer);
        var spans = JsonDocument.Parse(buffer.ToArray()).RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        Assert.Equal("prefill", spans[0].GetProperty("name").GetString());
        Assert.Equal(3, spans[0].GetProperty("args").GetProperty("tokens").GetInt32());
        Assert.Equal(Enumerable.Range(3, 9), spans.Skip(1).Select(e => e.GetProperty("args").GetProperty("position").GetInt32()));
    }

    [Fact]
    public void A_full_recorder_drops_and_counts_instead_of_growing()
    {
        var trace = new TraceRecorder(capacity: 4);
        for (int i = 0; i < 10; i++) trace.Record("s", "c", 0, i, i + 1);
        Assert.Equal((4, 6L), (trace.Count, trace.Dropped));
        using var buffer = new MemoryStream();
        trace.WriteChromeTrace(buffer);
        Assert.Equal(6, JsonDocument.Parse(buffer.ToArray()).RootElement.GetProperty("droppedSpans").GetInt64());
    }

    [Fact]
    public async Task The_schedulers_counters_reach_an_event_listener_as_dotnet_counters_would_read_them()
    {
        var options = new KvPacketEngineOptions { Model = new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048 } };
        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(Stories), options);
        await foreach (var _ in engine.GenerateAsync(new EngineRequest { Prefix = [1], Prompt = [5, 6, 7], Mode = RagMode.Full, Limits = new GenerationLimits { MaxTokens = 4 } })) { }
        using var listener = new CounterListener();
        var names = await listener.Seen.Task.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Superset(new HashSet<string> { "requests-running", "requests-waiting", "batch-size", "steps", "preemptions" }, names);
    }

    /// <summary>Turns the counters on every 0.1 s, as dotnet-counters does, and collects their names.</summary>
    private sealed class CounterListener : EventListener
    {
        private readonly HashSet<string> _names = [];
        public TaskCompletionSource<HashSet<string>> Seen { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "KvPacket.Scheduler")
                EnableEvents(source, EventLevel.Verbose, EventKeywords.All, new Dictionary<string, string?> { ["EventCounterIntervalSec"] = "0.1" });
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventName != "EventCounters" || e.Payload is not { Count: > 0 } || e.Payload[0] is not IDictionary<string, object> counter) return;
            lock (_names)
            {
                _names.Add((string)counter["Name"]);
                if (_names.Count >= 5) Seen.TrySetResult([.. _names]);
            }
        }
    }

    /// <summary>The trace drawn as an SVG timeline: well-formed, a bar per span on its row, the named rows labelled.</summary>
    private static void AssertTimelineDrawsEverySpan(byte[] trace)
    {
        var spans = JsonDocument.Parse(trace).RootElement.GetProperty("traceEvents").EnumerateArray().Count(e => e.GetProperty("ph").GetString() == "X");
        using var svg = new StringWriter();
        var bars = TraceTimeline.Write(new MemoryStream(trace), svg, title: "serving <test>");
        Assert.Equal(spans, bars.Count);
        var document = System.Xml.Linq.XDocument.Parse(svg.ToString());
        var ns = System.Xml.Linq.XNamespace.Get("http://www.w3.org/2000/svg");
        Assert.Equal(spans, document.Descendants(ns + "rect").Count(r => r.Element(ns + "title") is not null));
        var texts = document.Descendants(ns + "text").Select(t => t.Value).ToList();
        Assert.Contains("scheduler", texts);
        Assert.Contains("step", texts);
        Assert.Contains(texts, t => t.StartsWith("serving <test>", StringComparison.Ordinal));
        Assert.Throws<InvalidDataException>(() => TraceTimeline.Write(new MemoryStream("{\"x\": 1}"u8.ToArray()), TextWriter.Null));
    }
}
