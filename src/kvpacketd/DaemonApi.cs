using System.Text;
using System.Text.Json;
using KvPacket.Core.Tokenization;
using KvPacket.Engine.Serving;
using KvPacket.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Hosting;

namespace KvPacket.Daemon;

/// <summary>
/// The HTTP endpoints: <c>/v1/completions</c> (OpenAI-style, JSON or server-sent events, with <c>packets</c>,
/// <c>documents</c> and <c>mode</c>), <c>/v1/chat/completions</c>, <c>/v1/packets</c>, <c>/health</c> and <c>/metrics</c>.
/// Errors are JSON with a 4xx/5xx status; a client that disconnects cancels its request.
/// </summary>
internal sealed class DaemonApi(KvPacketEngine engine, PacketStore store, Func<StoredPackets?> packets, ITokenizer? tokenizer,
    DaemonMetrics metrics, DaemonOptions options, string modelName, IHostApplicationLifetime lifetime)
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/health", context => Respond(context, () => Results.Json(new { status = "ok", model = modelName, packets = engine.Packets.Count })));
        app.MapGet("/metrics", context => Respond(context, () => Results.Text(Metrics(), "text/plain; version=0.0.4")));
        app.MapGet("/v1/packets", context => Respond(context, () => Results.Json(new { data = engine.Packets.Select(Describe) })));
        app.MapGet("/v1/packets/{id}", (HttpContext context, string id) => Respond(context, () =>
            engine.TryGetPacket(id, out var handle) ? Results.Json(Describe(handle)) : throw new ApiError(404, $"no packet '{id}'.", "not_found")));
        app.MapDelete("/v1/packets/{id}", (HttpContext context, string id) => Handle(context, async () =>
        {
            if (!engine.TryGetPacket(id, out var handle)) throw new ApiError(404, $"no packet '{id}'.", "not_found");
            engine.RemovePacket(id);
            if (packets() is { } stored) await store.DeleteAsync(stored.IdOf(handle.Document, null));
            return Results.Json(new { id, deleted = true });
        }));
        app.MapPost("/v1/packets", context => Handle(context, async () =>
        {
            var body = await ReadBody(context);
            if (!body.TryGetProperty("text", out var document) && !body.TryGetProperty("tokens", out document))
                throw new ApiError(400, "give the document as 'text' or as 'tokens'.");
            int[] tokens = CompletionRequest.Tokens(document, "text/tokens", tokenizer, engine.Config.MaxContextLength);
            if (tokens.Length == 0) throw new ApiError(400, "the document is empty.");
            if (tokens.Length > engine.Config.MaxContextLength) throw new ApiError(400, $"the document has {tokens.Length} tokens; the model's context is {engine.Config.MaxContextLength}.");
            if (tokens.Any(t => t >= engine.Config.VocabSize)) throw new ApiError(400, $"token ids must be below the vocabulary size {engine.Config.VocabSize}.");
            var handle = await engine.AddPacketAsync(tokens, context.RequestAborted);
            return Results.Json(Describe(handle), statusCode: 201);
        }));
        app.MapPost("/v1/completions", context => Handle(context, async () =>
        {
            var request = CompletionRequest.Parse(await ReadBody(context), tokenizer, engine.Config.BosTokenId ?? 1, options.MaxTokens, engine.Config.MaxContextLength);
            return await Complete(context, request);
        }));
        app.MapPost("/v1/chat/completions", context => Respond(context, () =>
            throw new ApiError(400, $"model {modelName} has no chat template; use /v1/completions.")));
    }

    private static object Describe(PacketHandle handle) => new { id = handle.Id, tokens = handle.Document.Length, bytes = handle.KvBytes };

    private async Task<IResult?> Complete(HttpContext context, CompletionRequest request)
    {
        string id = "cmpl-" + Guid.NewGuid().ToString("N")[..24];
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var decoder = tokenizer is null ? null : new TokenStreamDecoder(tokenizer);
        var tokens = new List<int>();
        var text = new StringBuilder();
        GenerationSummary? summary = null;
        IAsyncEnumerable<GenerationEvent> stream;
        try { stream = engine.GenerateAsync(request.Engine, context.RequestAborted); }
        catch (KeyNotFoundException e) { throw new ApiError(404, e.Message, "not_found"); }
        var response = context.Response;
        bool started = false;
        await using var events = stream.GetAsyncEnumerator(context.RequestAborted);
        while (true)
        {
            bool more;
            try { more = await events.MoveNextAsync(); }
            catch (KeyNotFoundException e) { throw new ApiError(404, e.Message, "not_found"); }
            catch (OverloadedException e) { throw new ApiError(429, e.Message, "overloaded"); }
            catch (ArgumentException e) { throw new ApiError(400, e.Message); }
            catch (NotSupportedException e) { throw new ApiError(400, e.Message); }
            catch (InvalidOperationException e) { throw new ApiError(400, e.Message); }
            if (!more) break;
            var update = events.Current;
            if (update.IsFinal) { summary = update.Summary; break; }
            tokens.Add(update.Token);
            string piece = decoder?.Append(update.Token) ?? "";
            text.Append(piece);
            if (!request.Stream) continue;
            if (!started)
            {
                started = true;
                response.ContentType = "text/event-stream";
                response.Headers.CacheControl = "no-cache";
            }
            await Event(response, new { id, @object = "text_completion", created, model = modelName, choices = new[] { new { index = 0, text = piece, tokens = new[] { update.Token }, finish_reason = (string?)null } } });
        }
        summary ??= new GenerationSummary(0, 0, tokens.Count, 0, 0, 0, 0, FinishReason.Cancelled);
        metrics.Completion(summary.GeneratedTokens, summary.TimeToFirstTokenSeconds);
        if (summary.Reason == FinishReason.Error) throw new ApiError(500, summary.Error ?? "generation failed", "server_error");
        string finish = summary.Reason switch { FinishReason.Stop => "stop", FinishReason.Length => "length", _ => summary.Reason.ToString().ToLowerInvariant() };
        var usage = new { prompt_tokens = summary.PromptTokens + summary.PacketTokens, completion_tokens = summary.GeneratedTokens, total_tokens = summary.PromptTokens + summary.PacketTokens + summary.GeneratedTokens };
        var extension = new { mode = request.Engine.Mode.ToString().ToLowerInvariant(), ttft_ms = summary.TimeToFirstTokenSeconds * 1e3, computed_prompt_tokens = summary.PromptTokens, packet_tokens = summary.PacketTokens, preemptions = summary.Preemptions };
        if (request.Stream)
        {
            if (!started) { response.ContentType = "text/event-stream"; response.Headers.CacheControl = "no-cache"; }
            await Event(response, new { id, @object = "text_completion", created, model = modelName, choices = new[] { new { index = 0, text = "", finish_reason = finish } }, usage, kvpacket = extension });
            await response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);
            metrics.Request(200);
            return null;
        }
        return Results.Json(new { id, @object = "text_completion", created, model = modelName, choices = new[] { new { index = 0, text = text.ToString(), tokens, finish_reason = finish } }, usage, kvpacket = extension });
    }

    private static async Task Event(HttpResponse response, object payload)
    {
        await response.WriteAsync("data: " + JsonSerializer.Serialize(payload) + "\n\n", response.HttpContext.RequestAborted);
        await response.Body.FlushAsync(response.HttpContext.RequestAborted);
    }

    private static async Task<JsonElement> ReadBody(HttpContext context)
    {
        if (context.Request.ContentLength > MaxBodySize(context)) throw new ApiError(413, "the request body is too large.", "request_too_large");
        try
        {
            using var document = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new ApiError(400, $"the body must be a JSON object, not {document.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            return document.RootElement.Clone();
        }
        catch (JsonException e) { throw new ApiError(400, $"the body is not valid JSON: {e.Message}"); }
        catch (BadHttpRequestException e) when (e.StatusCode == 413) { throw new ApiError(413, "the request body is too large.", "request_too_large"); }
        catch (BadHttpRequestException e) { throw new ApiError(e.StatusCode, $"the request body is malformed: {e.Message}"); }
        // Kestrel reports some framing errors (a chunk size that overflows) as IOException.
        catch (IOException e) when (!context.RequestAborted.IsCancellationRequested) { throw new ApiError(400, $"the request body could not be read: {e.Message}"); }
    }

    private static long MaxBodySize(HttpContext context) =>
        context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize ?? long.MaxValue;

    /// <summary>Runs an endpoint: a request after shutdown began gets 503; <see cref="ApiError"/>s become JSON errors; every answer is counted.</summary>
    private async Task Handle(HttpContext context, Func<Task<IResult?>> handler)
    {
        try
        {
            if (lifetime.ApplicationStopping.IsCancellationRequested) throw new ApiError(503, "the daemon is shutting down.", "unavailable");
            var result = await handler();
            if (result is not null)
            {
                await result.ExecuteAsync(context);
                metrics.Request(context.Response.StatusCode);
            }
        }
        catch (ApiError e) when (!context.Response.HasStarted)
        {
            await e.WriteAsync(context);
            metrics.Request(e.Status);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            metrics.Request(499); // the client went away; its request was cancelled
        }
        catch (Exception e) when (!context.Response.HasStarted)
        {
            // A bug, not the client's fault: a JSON 500 naming the request, and the whole story in the log under that id.
            Console.Error.WriteLine($"kvpacketd: request {context.TraceIdentifier} {context.Request.Method} {context.Request.Path} failed: {e}");
            await new ApiError(500, $"internal error (request {context.TraceIdentifier}); the daemon's log has the details.", "internal_error").WriteAsync(context);
            metrics.Request(500);
        }
    }

    private Task Respond(HttpContext context, Func<IResult> handler) => Handle(context, () => Task.FromResult<IResult?>(handler()));

    private string Metrics()
    {
        var scheduler = engine.Scheduler;
        var stored = packets();
        var gc = GC.GetGCMemoryInfo();
        return metrics.Render(
        [
            ("kvpacket_requests_running", "Requests holding KV and generating.", scheduler.RunningCount),
            ("kvpacket_requests_waiting", "Requests waiting for admission.", scheduler.WaitingCount),
            ("kvpacket_batch_size", "Requests in the last step's batch.", scheduler.LastBatchSize),
            ("kvpacket_scheduler_steps", "Forward steps run.", scheduler.Steps),
            ("kvpacket_preemptions", "Requests preempted for lack of KV blocks.", scheduler.Preemptions),
            ("kvpacket_kv_blocks_in_use", "KV blocks in use.", engine.KvBlocksInUse),
            ("kvpacket_kv_blocks_total", "KV blocks in the cache.", engine.KvBlockCount),
            ("kvpacket_packets", "Packets known.", engine.Packets.Count),
            ("kvpacket_packet_resident_hits", "Packet acquires served from the resident tier.", stored?.ResidentHits ?? 0),
            ("kvpacket_packet_store_loads", "Packet acquires read from the store.", stored?.StoreLoads ?? 0),
            ("kvpacket_packet_builds", "Packets built and stored.", stored?.Builds ?? 0),
            ("kvpacket_gc_heap_bytes", "Managed heap size after the last garbage collection.", gc.HeapSizeBytes),
            ("kvpacket_gc_fragmented_bytes", "Free space inside the managed heap after the last collection.", gc.FragmentedBytes),
            ("kvpacket_gc_committed_bytes", "Memory the garbage collector has committed.", gc.TotalCommittedBytes),
        ]);
    }
}
