"""The peer for `kvpacket cuda draw`: token draws in PyTorch the way PyTorch serving stacks do them without a fused
sampling kernel — sort the logits, mask past top-k and past the top-p prefix, softmax, then an exponential race
(argmax of p / q, q ~ Exp(1)) for the draw. Same vocabulary, rows and rules; CUDA events, medians after warm-up.

usage: python3 torch_sampling.py [VOCAB] [REPEATS]
"""
import sys

import torch

vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 128256
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 50
device = torch.device("cuda")
generator = torch.Generator(device=device).manual_seed(21)


def logits_like_a_model(rows):
    x = torch.randn(rows, vocab, device=device, generator=generator) * 2.5
    strong = torch.randint(0, vocab, (rows, 20), device=device, generator=generator)
    x.scatter_add_(1, strong, 6 + 6 * torch.rand(rows, 20, device=device, generator=generator))
    return x


def draw(logits, temperature, top_k, top_p):
    if temperature == 0:
        return logits.argmax(dim=-1)
    x = logits / temperature
    if top_k > 0 or top_p < 1:
        sorted_x, order = x.sort(dim=-1, descending=False)
        if top_k > 0:
            kth = sorted_x[:, -top_k].unsqueeze(1)
            sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
        if top_p < 1:
            # The prefix (from the top) whose mass reaches p: drop what lies wholly below 1 − p from the bottom.
            cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
            below = cumulative <= 1 - top_p
            below[:, -1] = False
            sorted_x = sorted_x.masked_fill(below, float("-inf"))
        x = torch.empty_like(x).scatter_(1, order, sorted_x)
    probabilities = x.softmax(dim=-1)
    race = torch.empty_like(probabilities).exponential_(generator=generator)
    return (probabilities / race).argmax(dim=-1)


def time_ms(work):
    for _ in range(5):
        work()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}; vocabulary {vocab}")
rules = [("argmax", 0, 0, 1.0), ("T 1", 1.0, 0, 1.0), ("T 0.8 top-p 0.95", 0.8, 0, 0.95), ("T 0.7 top-k 50 top-p 0.9", 0.7, 50, 0.9)]
for rows in (1, 32):
    logits = logits_like_a_model(rows)
    for name, t, k, p in rules:
        # .cpu(): the ids reach the host, as ours do.
        ms = time_ms(lambda: draw(logits, t, k, p).cpu())
        print(f"  {rows:2} row(s), {name:<26}: PyTorch {ms * 1e3:8.1f} µs")
