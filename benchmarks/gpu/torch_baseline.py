"""The same shape in PyTorch/transformers on the same GPU, for the ratio our/their: random bf16 weights, SDPA attention,
torch.inference_mode, CUDA events after warm-up, medians. Prints prefill tokens/s for 4096 tokens and the decode
step time at batches 1 and 32 with a 512-token cache: eager (dynamic cache, as transformers runs by default) and with a
static cache replayed from a CUDA graph (the fair comparison with our graph-replayed decode)."""
import json
import statistics
import sys

import torch
import transformers


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(card_path):
    card = json.load(open(card_path))
    name = card.pop("name")
    config = transformers.AutoConfig.for_model(card.pop("model_type"), **card)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    vocab = config.vocab_size
    with torch.inference_mode():
        prompt = torch.randint(0, vocab, (1, 4096), device="cuda")
        model(prompt)  # warm-up
        prefill_ms = timed(lambda: model(prompt), 5)

        def decode(batch):
            ctx = torch.randint(0, vocab, (batch, 512), device="cuda")
            tok = torch.full((batch, 1), 7, device="cuda")
            cache = model(ctx, use_cache=True).past_key_values
            for _ in range(5):
                cache = model(tok, past_key_values=cache, use_cache=True).past_key_values
            steps = []
            for _ in range(30):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                cache = model(tok, past_key_values=cache, use_cache=True).past_key_values
                end.record()
                torch.cuda.synchronize()
                steps.append(start.elapsed_time(end))
            return statistics.median(steps)

        def decode_graphed(batch):
            # The fair baseline for decode: a static cache and the step captured in a CUDA graph, so Python and
            # launch overhead are out of the timing as they are out of ours.
            import inspect
            params = inspect.signature(transformers.StaticCache.__init__).parameters
            kwargs = {"config": config, "max_cache_len": 1024}
            if "max_batch_size" in params: kwargs["max_batch_size"] = batch
            if "device" in params: kwargs["device"] = "cuda"
            if "dtype" in params: kwargs["dtype"] = torch.bfloat16
            cache = transformers.StaticCache(**kwargs)
            ctx = torch.randint(0, vocab, (batch, 512), device="cuda")
            model(ctx, past_key_values=cache, use_cache=True, cache_position=torch.arange(512, device="cuda"))
            tok = torch.full((batch, 1), 7, device="cuda")
            position = torch.tensor([512], device="cuda")
            position_ids = position.expand(batch, 1)
            step = lambda: model(tok, past_key_values=cache, use_cache=True, cache_position=position, position_ids=position_ids).logits
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3): step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            for _ in range(5): graph.replay()
            return timed(graph.replay, 50)

        step_ms = decode(1)
        batch_ms = decode(32)
        try:
            graph_ms, graph_batch_ms = decode_graphed(1), decode_graphed(32)
        except Exception as error:  # report, do not hide: the eager numbers still stand
            print(f"  torch_graphed_decode_failed       {type(error).__name__}: {error}")
            graph_ms = graph_batch_ms = float("nan")
    print(f"torch {torch.__version__} transformers {transformers.__version__} {name} bf16 sdpa on {torch.cuda.get_device_name()}")
    print(f"  torch_prefill_4096_tokens_per_s   {4096 / (prefill_ms / 1e3):.1f}")
    print(f"  torch_decode_step_ms              {step_ms:.3f}")
    print(f"  torch_decode_tokens_per_s         {1e3 / step_ms:.1f}")
    print(f"  torch_decode_batch32_step_ms      {batch_ms:.3f}")
    print(f"  torch_decode_batch32_tokens_per_s {32e3 / batch_ms:.1f}")
    print(f"  torch_graphed_static_decode_step_ms          {graph_ms:.3f}")
    print(f"  torch_graphed_static_decode_tokens_per_s     {1e3 / graph_ms:.1f}")
    print(f"  torch_graphed_static_decode_batch32_step_ms  {graph_batch_ms:.3f}")
    print(f"  torch_graphed_static_decode_batch32_tokens_per_s {32e3 / graph_batch_ms:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
