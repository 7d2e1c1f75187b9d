using KvPacket.Core.Checkpoints;
using KvPacket.Core.Memory;
using KvPacket.Core.Model;
using KvPacket.Engine.Forward;
using KvPacket.Engine.Generation;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Sampling;
using KvPacket.Engine.Serving;
using Xunit;

namespace KvPacket.Tests;

public class SchedulerTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    private sealed class Collector : IGenerationSink
    {
        public readonly List<int> Tokens = [];
        public GenerationSummary? Summary;
        public void OnToken(int token, Engine.Sampling.TokenLogProbs? logProbs) => Tokens.Add(token);
        public void OnFinished(GenerationSummary summary) => Summary = summary;
    }

    private static int[] Solo(Checkpoint checkpoint, int[] prompt, int maxTokens)
    {
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        var tokens = new List<int>();
        new Generator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = maxTokens, StopTokens = [], Sampling = SamplingOptions.Greedy }, tokens.Add);
        return [.. tokens];
    }

    private static int[] Prompt(int length, ulong seed) => [1, .. ReferenceModels.RandomTokens(length - 1, seed)];

    private static (List<Collector> Sinks, Scheduler Scheduler) RunAll(Transformer model, SchedulerOptions options, IEnumerable<(int[] Prompt, int Max)> requests)
    {
        var scheduler = new Scheduler(model, options);
        var sinks = new List<Collector>();
        foreach (var (prompt, max) in requests)
        {
            var sink = new Collector();
            sinks.Add(sink);
            Assert.True(scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)], new GenerationLimits { MaxTokens = max, StopTokens = [] }, sink, [])));
        }
        for (int guard = 0; sinks.Any(s => s.Summary is null); guard++)
        {
            Assert.True(guard < 10_000, "the scheduler stopped making progress");
            scheduler.Step();
        }
        return (sinks, scheduler);
    }

    [Fact]
    public void Batched_requests_with_chunked_prefill_generate_exactly_what_each_generates_alone()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 4096, MaxBatchTokens = 64, MaxBatchSequences = 8 });
        var requests = Enumerable.Range(0, 8).Select(i => (Prompt(5 + 9 * i, (ulong)i + 20), 12 + i)).ToArray();
        var (sinks, scheduler) = RunAll(model, new SchedulerOptions { TokenBudget = 24 }, requests);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(Solo(checkpoint, requests[i].Item1, requests[i].Item2), sinks[i].Tokens);
            Assert.Equal(FinishReason.Length, sinks[i].Summary!.Reason);
            Assert.Equal(requests[i].Item1.Length, sinks[i].Summary!.PromptTokens);
        }
        Assert.True(scheduler.Steps < requests.Sum(r => r.Item1.Length + r.Item2), "requests were not batched");
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);
    }

    [Fact]
    public void A_prompt_prefix_placed_from_the_cache_generates_what_computing_it_does()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 1024, MaxBatchTokens = 64 });
        using var packet = model.BuildPacket(ReferenceModels.RandomTokens(45, 31));
        int[] query = ReferenceModels.RandomTokens(7, 32);

        // By hand: BOS computed, the packet placed after it, the query computed, then greedy decoding.
        var expected = new List<int>();
        var logits = new float[checkpoint.Config.VocabSize];
        using (var sequence = new BackendSequence(model, ((IForwardBackend)model).CreateSequence()))
        {
            sequence.Prefill([1], logits);
            sequence.AppendPacket(packet);
            sequence.Prefill(query, logits);
            for (int i = 0; i < 12; i++)
            {
                expected.Add(System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(logits));
                sequence.Prefill([expected[^1]], logits);
            }
        }

        // Twice through the scheduler: the first request builds the BOS packet, the second finds it; neither computes it.
        var scheduler = new Scheduler(model);
        foreach (int run in new[] { 1, 2 })
        {
            var sink = new Collector();
            Assert.True(scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens([1]), new PromptSegment.Placed(packet.Share()), new PromptSegment.Tokens(query)],
                new GenerationLimits { MaxTokens = 12, StopTokens = [] }, sink, [])));
            for (int guard = 0; sink.Summary is null; guard++)
            {
                Assert.True(guard < 1000, "the scheduler stopped making progress");
                scheduler.Step();
            }
            Assert.Equal(expected, sink.Tokens);
            Assert.Equal((query.Length, 1 + 45), (sink.Summary.PromptTokens, sink.Summary.PacketTokens));
        }
        Assert.Equal(1, scheduler.PrefixBlocks);
        scheduler.ReleasePrefixes();
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount + packet.Blocks.Count);
    }

    [Fact]
    public void Running_out_of_blocks_preempts_and_recomputes_without_changing_any_output()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        // 20 blocks of 16 tokens for six requests that each grow to 60-80 tokens: they cannot all be resident.
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 320, MaxBatchTokens = 64, MaxBatchSequences = 6 });
        var requests = Enumerable.Range(0, 6).Select(i => (Prompt(30 + 3 * i, (ulong)i + 40), 40)).ToArray();
        var (sinks, scheduler) = RunAll(model, new SchedulerOptions(), requests);
        Assert.True(scheduler.Preemptions > 0, "the test did not force a preemption");
        for (int i = 0; i < requests.Length; i++) Assert.Equal(Solo(checkpoint, requests[i].Item1, 40), sinks[i].Tokens);
        Assert.Contains(sinks, s => s.Summary!.Preemptions > 0);
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);
    }

    [Fact]
    public void Stop_sequences_cancellation_deadlines_and_a_full_queue_end_requests_cleanly()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 64, MaxBatchSequences = 4 });
        int[] prompt = Prompt(10, 3);
        int[] expected = Solo(checkpoint, prompt, 30);
        var scheduler = new Scheduler(model, new SchedulerOptions { MaxWaiting = 3 });
        var stop = new Collector();
        var cancelled = new Collector();
        var expired = new Collector();
        using var cancel = new CancellationTokenSource();
        scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)],
            new GenerationLimits { MaxTokens = 30, StopTokens = [], StopSequences = [expected[4..6]] }, stop, []));
        scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)], new GenerationLimits { MaxTokens = 30, StopTokens = [] }, cancelled, [], cancel.Token));
        scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)],
            new GenerationLimits { MaxTokens = 30, StopTokens = [], Deadline = DateTimeOffset.UtcNow.AddDays(-1) }, expired, []));
        Assert.False(scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)], new GenerationLimits(), new Collector(), [])));
        for (int i = 0; i < 4; i++) scheduler.Step();
        cancel.Cancel();
        for (int i = 0; i < 40 && (stop.Summary is null || cancelled.Summary is null); i++) scheduler.Step();

        Assert.Equal(expected[..6], stop.Tokens);
        Assert.Equal(FinishReason.Stop, stop.Summary!.Reason);
        Assert.Equal(FinishReason.Cancelled, cancelled.Summary!.Reason);
        Assert.InRange(cancelled.Tokens.Count, 1, 29);
        Assert.Equal(FinishReason.Deadline, expired.Summary!.Reason);
        Assert.Empty(expired.Tokens);
        Assert.Equal(model.KvPool.BlockCount, model.KvPool.FreeBlockCount);
        Assert.Contains("context", Assert.Throws<ArgumentException>(() => scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(prompt)],
            new GenerationLimits { MaxTokens = 600 }, new Collector(), []))).Message);
    }

    [Fact]
    public void A_steady_decode_step_allocates_nothing()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        using var model = new Transformer(checkpoint, new TransformerOptions { KvType = DType.F32, KvCacheTokens = 2048, MaxBatchTokens = 64, MaxBatchSequences = 4 });
        var scheduler = new Scheduler(model);
        var sinks = Enumerable.Range(0, 4).Select(_ => new CountingSink()).ToArray();
        foreach (var sink in sinks)
            scheduler.TrySubmit(new ScheduledRequest([new PromptSegment.Tokens(Prompt(8, 5))], new GenerationLimits { MaxTokens = 200, StopTokens = [] }, sink, []));
        for (int i = 0; i < 10; i++) scheduler.Step(); // admission, prefill, warm-up
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 50; i++) scheduler.Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(4, scheduler.LastBatchSize);
        Assert.Equal(0, allocated);
    }

    private sealed class CountingSink : IGenerationSink
    {
        public int Count;
        public void OnToken(int token, Engine.Sampling.TokenLogProbs? logProbs) => Count++;
        public void OnFinished(GenerationSummary summary) { }
    }

    [Fact]
    public async Task The_engine_serves_concurrent_streams_over_shared_packets_and_returns_every_block()
    {
        using var checkpoint = CheckpointLoader.Load(Stories);
        var adapter = Adapter.Untrained("zero", checkpoint.Config.HiddenSize, 2, 2, 2);
        var options = new KvPacketEngineOptions
        {
            Model = new TransformerOptions { KvType = DType.F32, KvCacheTokens = 8192, MaxBatchTokens = 128, MaxBatchSequences = 32 },
            Adapter = adapter,
        };
        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(Stories), options);
        var first = await engine.AddPacketAsync(ReferenceModels.RandomTokens(40, 1));
        var second = await engine.AddPacketAsync(ReferenceModels.RandomTokens(33, 2));
        Assert.Equal(first.Id, (await engine.AddPacketAsync(first.Document)).Id);
        int packetBlocks = engine.KvBlocksInUse;

        Task<(List<int> Tokens, GenerationSummary Summary)> Run(EngineRequest request) => RunAsync(engine, request);
        EngineRequest Request(RagMode mode, int i) => new()
        {
            Prefix = [1], Packets = [first.Id, second.Id], Prompt = ReferenceModels.RandomTokens(6, 100 + (ulong)(i % 4)), Mode = mode,
            Limits = new GenerationLimits { MaxTokens = 16, StopTokens = [] },
        };

        // Alone first, then 32 at once (four distinct prompts, three modes): every stream equals its solo run.
        var modes = new[] { RagMode.Naive, RagMode.KvPacket, RagMode.KvLink, RagMode.Full };
        var solo = new Dictionary<(RagMode, int), List<int>>();
        foreach (var mode in modes)
            for (int i = 0; i < 4; i++) solo[(mode, i)] = (await Run(Request(mode, i))).Tokens;
        var concurrent = await Task.WhenAll(Enumerable.Range(0, 32).Select(i => Task.Run(() => Run(Request(modes[i % 4], i / 4)))));
        for (int i = 0; i < 32; i++)
        {
            Assert.Equal(solo[(modes[i % 4], (i / 4) % 4)], concurrent[i].Tokens);
            Assert.Equal(16, concurrent[i].Summary.GeneratedTokens);
            // Packet modes place the BOS prefix too, from the scheduler's prefix cache: 1 + 73 tokens (+ 8 header/trailer).
            Assert.Equal(modes[i % 4] == RagMode.Full ? 0 : 1 + 73 + (modes[i % 4] == RagMode.KvPacket ? 8 : 0), concurrent[i].Summary.PacketTokens);
        }
        Assert.True(engine.Scheduler.Steps > 0);
        Assert.Equal(1, engine.Scheduler.PrefixBlocks);
        Assert.Equal(packetBlocks + 1, engine.KvBlocksInUse); // only the packets' and the cached prefix's blocks remain

        // Bad input is refused before anything runs.
        await Assert.ThrowsAsync<KeyNotFoundException>(async () => { await foreach (var _ in engine.GenerateAsync(Request(RagMode.Naive, 0) with { Packets = ["nope"] })) { } });
        await Assert.ThrowsAsync<NotSupportedException>(async () => { await foreach (var _ in engine.GenerateAsync(Request(RagMode.Epic, 0))) { } });
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => { await foreach (var _ in engine.GenerateAsync(Request(RagMode.Naive, 0) with { Prompt = [9999] })) { } });

        // A stream abandoned after two tokens ends its request and frees its blocks.
        int seen = 0;
        await foreach (var e in engine.GenerateAsync(Request(RagMode.Naive, 1) with { Limits = new GenerationLimits { MaxTokens = 200, StopTokens = [] } }))
            if (++seen == 2) break;
        for (int i = 0; i < 100 && engine.KvBlocksInUse != packetBlocks + 1; i++) await Task.Delay(10);
        Assert.Equal(packetBlocks + 1, engine.KvBlocksInUse);
    }

    [Theory]
    [InlineData(RagMode.Naive)]
    [InlineData(RagMode.KvLink)]
    [InlineData(RagMode.Full)]
    public async Task Choices_of_one_prompt_compute_it_once_and_each_equals_its_solo_run(RagMode mode)
    {
        var options = new KvPacketEngineOptions
        {
            Model = new TransformerOptions { KvType = DType.F32, KvCacheTokens = 8192, MaxBatchTokens = 64, MaxBatchSequences = 16 },
            Adapter = Adapter.Untrained("links", CheckpointLoader.Load(Stories).Config.HiddenSize, 0, 0, 2),
        };
        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(Stories), options);
        var packet = await engine.AddPacketAsync(ReferenceModels.RandomTokens(37, 3));
        Task<(List<int> Tokens, GenerationSummary Summary)> Run(EngineRequest request) => RunAsync(engine, request);
        // A 70-token prompt: more than the 64-token chunk budget, so the leader takes two steps to compute it.
        EngineRequest Choice(ulong seed, PromptGroup? group) => new()
        {
            Prefix = [1], Packets = [packet.Id], Prompt = ReferenceModels.RandomTokens(70, 7), Mode = mode, Group = group,
            Limits = new GenerationLimits { MaxTokens = 32, StopTokens = [], Sampling = new SamplingOptions { Temperature = 0.9f, Seed = seed } },
        };
        var solo = new List<(List<int> Tokens, GenerationSummary Summary)>();
        for (ulong seed = 1; seed <= 4; seed++) solo.Add(await Run(Choice(seed, null)));
        int blocks = engine.KvBlocksInUse;

        // Submitted together, as the daemon submits a request's n choices: each stream's first step posts its request at once.
        var group = new PromptGroup();
        var choices = await Task.WhenAll(Enumerable.Range(1, 4).Select(seed => Run(Choice((ulong)seed, group))));
        for (int i = 0; i < 4; i++) Assert.Equal(solo[i].Tokens, choices[i].Tokens);
        int full = solo[0].Summary.PromptTokens;
        var computed = choices.Select(c => c.Summary.PromptTokens).Order().ToArray();
        Assert.Equal(full, computed[^1]);                                             // the leader computed the whole prompt
        Assert.All(computed[..^1], c => Assert.InRange(c, 1, 16));                    // each sibling at most the last block's tokens
        Assert.All(choices, c => Assert.Equal(solo[0].Summary.PacketTokens, c.Summary.PacketTokens));
        Assert.Equal(blocks, engine.KvBlocksInUse);                                   // shared blocks all came back
        Assert.NotEqual(solo[0].Tokens, solo[1].Tokens);                              // the seeds do differ
    }

    [Fact]
    public async Task A_sampled_request_draws_the_same_tokens_where_the_logits_are_as_on_the_host()
    {
        await using var engine = KvPacketEngine.Create(CheckpointLoader.Load(Stories), new KvPacketEngineOptions { Model = new TransformerOptions { KvType = DType.F32 } });
        EngineRequest Request(ulong seed, IReadOnlyDictionary<int, float>? bias) => new()
        {
            Prompt = Prompt(20, 5), Mode = RagMode.Full,
            Limits = new GenerationLimits { MaxTokens = 48, StopTokens = [], Sampling = new SamplingOptions { Temperature = 1.1f, TopK = 40, TopP = 0.9f, Seed = seed, LogitBias = bias } },
        };
        // No bias: the scheduler hands each step's draws to the backend (StepDraw). A bias, even of nothing, makes it
        // bring the logits back and sample on the host: the same rule and the same random stream give the same tokens.
        var onBackend = await RunAsync(engine, Request(3, null));
        var onHost = await RunAsync(engine, Request(3, new Dictionary<int, float> { [0] = 0f }));
        Assert.Equal(onHost.Tokens, onBackend.Tokens);
        Assert.NotEqual(onBackend.Tokens, (await RunAsync(engine, Request(4, null))).Tokens);   // the seed matters
    }

    /// <summary>A request's tokens and summary.</summary>
    private static async Task<(List<int> Tokens, GenerationSummary Summary)> RunAsync(KvPacketEngine engine, EngineRequest request)
    {
        var tokens = new List<int>();
        GenerationSummary? summary = null;
        await foreach (var e in engine.GenerateAsync(request))
            if (e.IsFinal) summary = e.Summary; else tokens.Add(e.Token);
        return (tokens, summary!);
    }
}

/// <summary>The serving engine over the backend contract: the CPU here, the GPU where there is one (and in <c>kvpacket cuda check</c>).</summary>
public class ServingConsistencyTests
{
    private static readonly string Stories = Fixtures.PathOf("stories260K/stories260K.bin");

    [Fact]
    public async Task On_the_cpu_32_concurrent_and_preempted_requests_in_every_mode_generate_what_each_does_alone()
    {
        var result = await ServingConsistency.RunAsync(() => CheckpointLoader.Load(Stories),
            (model, kvTokens) => new Transformer(model, new TransformerOptions { KvType = DType.F32, KvCacheTokens = kvTokens, MaxBatchTokens = 64, MaxBatchSequences = 32 }));
        Assert.True(result.Passed, result.ToString());
    }

    [CudaFact]
    public async Task On_the_gpu_in_f32_32_concurrent_and_preempted_requests_in_every_mode_generate_what_each_does_alone()
    {
        using var device = Compute.Cuda.CudaDevice.Open();
        var result = await ServingConsistency.RunAsync(() => CheckpointLoader.Load(Stories),
            (model, kvTokens) => new Engine.Cuda.CudaTransformer(model, device, DType.F32, DType.F32, maxTokens: 64, kvTokens: kvTokens, maxSequences: 32));
        Assert.True(result.Passed, result.ToString());
    }
}
