"""The PyTorch peer for `kvpacket cuda train-bench`: the same Llama shape (a model card from models/), batch and sequence
length, trained with what a PyTorch user would write — bf16 autocast over f32 master weights, SDPA causal attention
(FlashAttention kernels), fused AdamW, gradient clipping — eager and under torch.compile. CUDA events after warm-up,
median step time, the same model-FLOPs accounting as ours.

usage: python3 torch_train.py CARD.json [--batch 16] [--length 1024] [--repeats 10] [--out FILE.json]
"""
import argparse, json, math, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16


class Block(nn.Module):
    def __init__(s, c):
        super().__init__()
        d, h, kv, hd, f = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["intermediate_size"]
        s.h, s.kv, s.hd = h, kv, hd
        s.attn_norm = nn.RMSNorm(d, eps=c["rms_norm_eps"])
        s.q = nn.Linear(d, h * hd, bias=False)
        s.k = nn.Linear(d, kv * hd, bias=False)
        s.v = nn.Linear(d, kv * hd, bias=False)
        s.o = nn.Linear(h * hd, d, bias=False)
        s.ffn_norm = nn.RMSNorm(d, eps=c["rms_norm_eps"])
        s.gate = nn.Linear(d, f, bias=False)
        s.up = nn.Linear(d, f, bias=False)
        s.down = nn.Linear(f, d, bias=False)

    def forward(s, x, cos, sin):
        b, n, _ = x.shape
        y = s.attn_norm(x)
        q = s.q(y).view(b, n, s.h, s.hd).transpose(1, 2)
        k = s.k(y).view(b, n, s.kv, s.hd).transpose(1, 2)
        v = s.v(y).view(b, n, s.kv, s.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + s.o(a.transpose(1, 2).reshape(b, n, s.h * s.hd))
        y = s.ffn_norm(x)
        return x + s.down(F.silu(s.gate(y)) * s.up(y))


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Llama(nn.Module):
    def __init__(s, c, n):
        super().__init__()
        s.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        s.blocks = nn.ModuleList([Block(c) for _ in range(c["num_hidden_layers"])])
        s.norm = nn.RMSNorm(c["hidden_size"], eps=c["rms_norm_eps"])
        hd = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
        s.register_buffer("cos", ang.cos().float(), persistent=False)
        s.register_buffer("sin", ang.sin().float(), persistent=False)
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(s, tokens, targets):
        x = s.embed(tokens)
        for blk in s.blocks:
            x = blk(x, s.cos, s.sin)
        logits = F.linear(s.norm(x), s.embed.weight)  # tied classifier
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("card")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out")
    a = p.parse_args()
    c = json.load(open(a.card))
    torch.manual_seed(1)
    dev = "cuda"
    b, n = a.batch, a.length
    tokens = torch.randint(0, c["vocab_size"], (b, n + 1), device=dev)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    d, L, f, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    matrices = L * (2 * q * d + 2 * kv * d + 3 * f * d) + V * d
    flops_per_token = 6.0 * matrices + 6.0 * L * n * q
    results = {}
    for mode in ["eager", "compile"]:
        torch.manual_seed(1)
        model = Llama(c, n).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        fwd = torch.compile(model) if mode == "compile" else model

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t0 = time.time()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        warm = time.time() - t0
        times = []
        for _ in range(a.repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            loss = step()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        ms = statistics.median(times)
        tf = flops_per_token * b * n / (ms / 1e3) / 1e12
        params = sum(p.numel() for p in model.parameters())
        results[mode] = {"step_ms_median": ms, "step_ms_all": times, "tokens_per_s": b * n / (ms / 1e3), "model_tflops": tf,
                         "mfu_vs_dense_bf16_peak": tf / PEAK_TFLOPS, "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                         "warmup_s": warm, "parameters": params, "loss_last": float(loss)}
        print(f"torch {mode:7s} {params/1e6:.1f}M params batch {b}x{n}: step {ms:.2f} ms, {b*n/(ms/1e3):.0f} tokens/s, {tf:.1f} TFLOP/s = "
              f"MFU {tf/PEAK_TFLOPS:.1%}; peak memory {torch.cuda.max_memory_allocated()/1e9:.2f} GB (warm-up {warm:.1f} s)", flush=True)
        del model, opt, fwd
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if a.out:
        json.dump(results, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
