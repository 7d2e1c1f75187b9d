"""The same shape in PyTorch/transformers on the same GPU, for the ratio our/their: random bf16 weights, SDPA attention,
torch.inference_mode, CUDA events after warm-up, medians. Prints prefill tokens/s for 4096 tokens and the decode
step time at batch 1 with a 512-token cache."""
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

        step_ms = decode(1)
        batch_ms = decode(32)
    print(f"torch {torch.__version__} transformers {transformers.__version__} {name} bf16 sdpa on {torch.cuda.get_device_name()}")
    print(f"  torch_prefill_4096_tokens_per_s   {4096 / (prefill_ms / 1e3):.1f}")
    print(f"  torch_decode_step_ms              {step_ms:.3f}")
    print(f"  torch_decode_tokens_per_s         {1e3 / step_ms:.1f}")
    print(f"  torch_decode_batch32_step_ms      {batch_ms:.3f}")
    print(f"  torch_decode_batch32_tokens_per_s {32e3 / batch_ms:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
