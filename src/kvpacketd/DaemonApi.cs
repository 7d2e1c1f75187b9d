using System.Text.Json;
using KvPacket.Engine.Rag;
using KvPacket.Engine.Serving;
using KvPacket.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Hosting;

namespace KvPacket.Daemon;

/// <summary>
/// The HTTP endpoints: <c>/v1/completions</c> (OpenAI-style, JSON or server-sent events, with <c>packets</c>,
/// <c>documents</c> and <c>mode</c>), <c>/v1/chat/completions</c> (through the model's chat template), <c>/v1/models</c>,
/// <c>/v1/packets</c>, <c>/health</c> and <c>/metrics</c>.
/// Errors are JSON with a 4xx/5xx status; a client that disconnects cancels its request.
/// </summary>
internal sealed class DaemonApi(KvPacketEngine engine, PacketStore store, Func<StoredPackets?> packets,
    DaemonMetrics metrics, DaemonOptions options, string modelName, Adapter? adapter, IHostApplicationLifetime lifetime)
{
    private readonly long _started = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public void Map(WebApplication app)
    {
        // Routing's own 404 and 405 carry OpenAI's error body too.
        app.Use(async (context, next) =>
        {
            await next(context);
            if (context.Response is { StatusCode: 404 or 405, HasStarted: false })
            {
                var error = context.Response.StatusCode == 404
                    ? new ApiError(404, $"no such endpoint: {context.Request.Method} {context.Request.Path}.", code: "unknown_url")
                    : new ApiError(405, $"{context.Request.Path} does not take {context.Request.Method}.", code: "method_not_allowed");
                await error.WriteAsync(context);
                metrics.Request(error.Status);
            }
        });
        app.MapGet("/v1/models", context => Respond(context, () => Results.Json(new { @object = "list", data = new[] { Model() } })));
        app.MapGet("/v1/models/{**id}", (HttpContext context, string id) => Respond(context, () => id == modelName ? Results.Json(Model())
            : throw new ApiError(404, $"The model '{id}' does not exist; this daemon serves '{modelName}'.", param: "model", code: "model_not_found")));
        app.MapGet("/health", context => Respond(context, () => Results.Json(new { status = "ok", model = modelName, packets = engine.Packets.Count })));
        app.MapGet("/metrics", context => Respond(context, () => Results.Text(Metrics(), "text/plain; version=0.0.4")));
        app.MapGet("/v1/packets", context => Respond(context, () => Results.Json(new { data = engine.Packets.Select(Describe) })));
        app.MapGet("/v1/packets/{id}", (HttpContext context, string id) => Handle(context, async () =>
        {
            await ResolveAsync([id], context.RequestAborted);
            return engine.TryGetPacket(id, out var handle) ? Results.Json(Describe(handle)) : throw new ApiError(404, $"no packet '{id}'.", code: "packet_not_found");
        }));
        app.MapDelete("/v1/packets/{id}", (HttpContext context, string id) => Handle(context, async () =>
        {
            if (!engine.TryGetPacket(id, out var handle)) throw new ApiError(404, $"no packet '{id}'.", code: "packet_not_found");
            engine.RemovePacket(id);
            if (packets() is { } stored) await store.DeleteAsync(stored.IdOf(handle.Document, null));
            return Results.Json(new { id, deleted = true });
        }));
        app.MapPost("/v1/packets", context => Handle(context, async () =>
        {
            var body = await ReadBody(context);
            if (!body.TryGetProperty("text", out var document) && !body.TryGetProperty("tokens", out document))
                throw new ApiError(400, "give the document as 'text' or as 'tokens'.", param: "text");
            int[] tokens = CompletionRequest.Tokens(document, "text/tokens", engine.Tokenizer, engine.Config.MaxContextLength);
            if (tokens.Length == 0) throw new ApiError(400, "the document is empty.");
            if (tokens.Length > engine.Config.MaxContextLength) throw new ApiError(400, $"the document has {tokens.Length} tokens; the model's context is {engine.Config.MaxContextLength}.");
            if (tokens.Any(t => t >= engine.Config.VocabSize)) throw new ApiError(400, $"token ids must be below the vocabulary size {engine.Config.VocabSize}.");
            var handle = await engine.AddPacketAsync(tokens, context.RequestAborted);
            if (packets()?.Shared is { } shared) await shared.PublishDocumentAsync(handle.Id, tokens);
            return Results.Json(Describe(handle), statusCode: 201);
        }));
        app.MapPost("/v1/completions", context => Handle(context, async () =>
        {
            var request = CompletionRequest.Parse(await ReadBody(context), engine.Tokenizer, engine.Config.BosTokenId ?? 1, options.MaxTokens, engine.Config.MaxContextLength, modelName, engine.DefaultPacketMode);
            return await Complete(context, request, chat: false);
        }));
        app.MapPost("/v1/chat/completions", context => Handle(context, async () =>
        {
            if (engine.ChatTemplate is not { } chatTemplate) throw new ApiError(400, $"model {modelName} has no chat template; use /v1/completions.", param: "messages", code: "no_chat_template");
            var body = await ReadBody(context);
            var request = CompletionRequest.Parse(body, engine.Tokenizer, engine.Config.BosTokenId ?? 1, options.MaxTokens, engine.Config.MaxContextLength, modelName, engine.DefaultPacketMode,
                ChatMessages.Render(body, chatTemplate));
            return await Complete(context, request, chat: true);
        }));
    }

    /// <summary>The served model as OpenAI's model object, with the adapter it serves packets with.</summary>
    private object Model() => new
    {
        id = modelName, @object = "model", created = _started, owned_by = "kvpacket",
        kvpacket = new { context_length = engine.Config.MaxContextLength, adapter = adapter is null ? null : $"{adapter.Id}@{adapter.Version}", default_packet_mode = engine.DefaultPacketMode.ToString().ToLowerInvariant() },
    };

    private static object Describe(PacketHandle handle) => new { id = handle.Id, tokens = handle.Document.Length, bytes = handle.KvBytes };

    /// <summary>
    /// Runs every choice of <paramref name="request"/> and answers in OpenAI's shape: a text completion, or with
    /// <paramref name="chat"/> a chat completion (see <see cref="CompletionShape"/>).
    /// </summary>
    private async Task<IResult?> Complete(HttpContext context, CompletionRequest request, bool chat)
    {
        await ResolveAsync(request.Prompts.SelectMany(p => p.Engine.Packets), context.RequestAborted);
        var first = request.Prompts[0].Engine;
        var shape = new CompletionShape(chat, modelName, first.Mode, first.Limits.LogProbs is not null, engine.Tokenizer);
        var choices = request.Choices().Select(c => (c.Prompt, Run: new CompletionChoice(engine, c.Index, c.Engine, request.Stops, context.RequestAborted))).ToArray();
        try
        {
            // Every choice accepted (or the request refused) before anything is sent: an error is then still a clean 4xx.
            await Task.WhenAll(choices.Select(c => c.Run.BeginAsync()));
            var response = context.Response;
            using var writing = new SemaphoreSlim(1, 1);
            async Task Send(object? chunk)
            {
                if (chunk is null) return;
                await writing.WaitAsync(context.RequestAborted);
                try
                {
                    if (!response.HasStarted)
                    {
                        response.ContentType = "text/event-stream";
                        response.Headers.CacheControl = "no-cache";
                    }
                    await Event(response, chunk);
                }
                finally { writing.Release(); }
            }
            await Task.WhenAll(choices.Select(async c =>
            {
                if (request.Stream) await Send(shape.Opening(c.Run.Index));
                if (request.Stream && request.Echo) await Send(shape.Piece(c.Run.Index, c.Prompt.Text, -1, null, 0));
                await c.Run.RunAsync(!request.Stream ? null
                    : (choice, text, token, logProbs) => Send(shape.Piece(choice.Index, text, token, logProbs, choice.Text.Length - text.Length)));
                metrics.Completion(c.Run.Summary?.GeneratedTokens ?? c.Run.Tokens.Count, c.Run.Summary?.TimeToFirstTokenSeconds ?? 0);
                if (request.Stream) await Send(shape.Finish(c.Run));
            }));
            // Prompt tokens once per prompt (its choices share it), completion tokens of every choice.
            int prompt = choices.Where(c => c.Run.Index % request.N == 0).Sum(c => (c.Run.Summary?.PromptTokens ?? 0) + (c.Run.Summary?.PacketTokens ?? 0));
            int completion = choices.Sum(c => c.Run.Tokens.Count);
            var usage = new { prompt_tokens = prompt, completion_tokens = completion, total_tokens = prompt + completion };
            if (!request.Stream) return Results.Json(shape.Body(choices.Select(c => (c.Run, request.Echo ? c.Prompt.Text : null)), usage));
            if (request.IncludeUsage) await Send(shape.Usage(usage));
            await response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);
            metrics.Request(200);
            return null;
        }
        finally
        {
            foreach (var c in choices) await c.Run.DisposeAsync();
        }
    }

    /// <summary>
    /// Packets this node does not know but another node published to the shared tier are added here (their KV loaded
    /// from the tier, not built); a name whose published document does not hash to it is ignored.
    /// </summary>
    private async Task ResolveAsync(IEnumerable<string> ids, CancellationToken cancellation)
    {
        if (packets()?.Shared is not { } shared) return;
        foreach (string id in ids)
        {
            if (engine.TryGetPacket(id, out _) || await shared.TryGetDocumentAsync(id) is not { } document) continue;
            if (KvPacketEngine.IdOf(document) != id || document.Length > engine.Config.MaxContextLength || document.Any(t => (uint)t >= (uint)engine.Config.VocabSize)) continue;
            await engine.AddPacketAsync(document, cancellation);
        }
    }

    private static async Task Event(HttpResponse response, object payload)
    {
        await response.WriteAsync("data: " + JsonSerializer.Serialize(payload) + "\n\n", response.HttpContext.RequestAborted);
        await response.Body.FlushAsync(response.HttpContext.RequestAborted);
    }

    private static async Task<JsonElement> ReadBody(HttpContext context)
    {
        if (context.Request.ContentLength > MaxBodySize(context)) throw new ApiError(413, "the request body is too large.", code: "request_too_large");
        try
        {
            using var document = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new ApiError(400, $"the body must be a JSON object, not {document.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            return document.RootElement.Clone();
        }
        catch (JsonException e) { throw new ApiError(400, $"the body is not valid JSON: {e.Message}"); }
        catch (BadHttpRequestException e) when (e.StatusCode == 413) { throw new ApiError(413, "the request body is too large.", code: "request_too_large"); }
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
            if (lifetime.ApplicationStopping.IsCancellationRequested) throw new ApiError(503, "the daemon is shutting down.", "server_error", code: "unavailable");
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
            await new ApiError(500, $"internal error (request {context.TraceIdentifier}); the daemon's log has the details.", "server_error", code: "internal_error").WriteAsync(context);
            metrics.Request(500);
        }
    }

    private Task Respond(HttpContext context, Func<IResult> handler) => Handle(context, () => Task.FromResult<IResult?>(handler()));

    private string Metrics()
    {
        var scheduler = engine.Scheduler;
        var stored = packets();
        var gc = GC.GetGCMemoryInfo();
        (string, string, double)[] tier = stored?.Shared is not { } shared ? [] :
        [
            ("kvpacket_shared_tier_up", "Whether the shared packet tier is reachable now.", shared.IsConnected ? 1 : 0),
            ("kvpacket_shared_tier_hits", "Packet loads served by the shared tier.", shared.Hits),
            ("kvpacket_shared_tier_misses", "Packet loads the shared tier could not serve: not there.", shared.Misses),
            ("kvpacket_shared_tier_errors", "Shared-tier loads and writes that failed: corrupt or foreign values, server errors.", shared.Errors),
            ("kvpacket_shared_tier_unavailable", "Shared-tier calls skipped while it was unreachable.", shared.Unavailable),
            ("kvpacket_shared_tier_read_bytes", "Packet bytes read from the shared tier.", shared.BytesRead),
            ("kvpacket_shared_tier_written_bytes", "Packet bytes written to the shared tier.", shared.BytesWritten),
            ("kvpacket_shared_tier_publishes", "Packets published to the shared tier.", shared.Publishes),
        ];
        return metrics.Render(
        [
            ("kvpacket_requests_running", "Requests holding KV and generating.", scheduler.RunningCount),
            ("kvpacket_requests_waiting", "Requests waiting for admission.", scheduler.WaitingCount),
            ("kvpacket_batch_size", "Requests in the last step's batch.", scheduler.LastBatchSize),
            ("kvpacket_scheduler_steps", "Forward steps run.", scheduler.Steps),
            ("kvpacket_preemptions", "Requests preempted for lack of KV blocks.", scheduler.Preemptions),
            ("kvpacket_kv_blocks_in_use", "KV blocks in use.", engine.KvBlocksInUse),
            ("kvpacket_kv_prefix_blocks", "KV blocks of those the cached prompt prefixes hold.", engine.Scheduler.PrefixBlocks),
            ("kvpacket_kv_blocks_total", "KV blocks in the cache.", engine.KvBlockCount),
            ("kvpacket_packets", "Packets known.", engine.Packets.Count),
            ("kvpacket_packet_resident_hits", "Packet acquires served from the resident tier.", stored?.ResidentHits ?? 0),
            ("kvpacket_packet_store_loads", "Packet acquires read from the store.", stored?.StoreLoads ?? 0),
            ("kvpacket_packet_store_prefetched_loads", "Packet acquires whose store read was done ahead, while steps computed.", stored?.PrefetchedLoads ?? 0),
            ("kvpacket_packet_store_load_bytes", "Stored bytes those loads read.", stored?.BytesLoaded ?? 0),
            ("kvpacket_packet_store_load_seconds", "Seconds those loads took, into the model's KV cache.", stored?.LoadSeconds ?? 0),
            ("kvpacket_packet_builds", "Packets built and stored.", stored?.Builds ?? 0),
            ("kvpacket_gc_heap_bytes", "Managed heap size after the last garbage collection.", gc.HeapSizeBytes),
            ("kvpacket_gc_fragmented_bytes", "Free space inside the managed heap after the last collection.", gc.FragmentedBytes),
            ("kvpacket_gc_committed_bytes", "Memory the garbage collector has committed.", gc.TotalCommittedBytes),
            .. tier,
        ]);
    }
}
