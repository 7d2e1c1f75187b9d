"""PyTorch autograd on the batches `kvpacket cuda train-check --dump DIR` wrote: the same model, adapter rows, masks,
positions and losses, differentiated by torch in float64, float32 (TF32 off) and bf16 autocast (f32 master weights),
each compared per tensor (norm-wise relative error) with our CPU float64 reference, and with our GPU gradients.

usage: python3 torch_grad.py DUMP_DIR [DUMP_DIR ...]
"""
import json, os, sys
import numpy as np
import torch


def load(directory):
    index = json.load(open(os.path.join(directory, "index.json")))
    data = np.fromfile(os.path.join(directory, "tensors.bin"), dtype="<f4")
    arrays = {k: data[o:o + n] for k, (o, n) in index["arrays"].items()}
    return index["metadata"], arrays


def unpack(flat, tensors, dtype, device):
    out = {}
    for name, (offset, *shape) in tensors.items():
        count = int(np.prod(shape))
        out[name] = torch.tensor(flat[offset:offset + count].reshape(shape), dtype=dtype, device=device, requires_grad=True)
    return out


def forward(c, p, batch, teacher, dtype, device, autocast):
    b, n = batch["sequences"], batch["length"]
    d, h, kv, hd = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"]
    source = torch.tensor(batch["source"], device=device).view(b, n)
    pos = torch.tensor(batch["positions"], device=device, dtype=torch.float64).view(b, n)
    first = torch.tensor(batch["first_visible"], device=device).view(b, n)
    j = torch.arange(n, device=device)
    allowed = (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= first[:, :, None])  # [b, i, j]
    emb = p["embedding"][source.clamp(min=0)]
    if "adapter_rows" in p:
        soft = p["adapter_rows"][(-1 - source).clamp(min=0)]
        emb = torch.where((source < 0)[..., None], soft, emb)
    x = emb
    inv = torch.tensor(c["inv_freq"], dtype=torch.float64, device=device)
    ang = pos[..., None] * inv  # [b, n, hd/2]
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)

    def rope(t):  # t [b, heads, n, hd]
        cs, sn = cos[:, None], sin[:, None]
        if c["interleaved"]:
            a, bb = t[..., 0::2], t[..., 1::2]
            return torch.stack([a * cs - bb * sn, a * sn + bb * cs], dim=-1).flatten(-2)
        a, bb = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([a * cs - bb * sn, a * sn + bb * cs], dim=-1)

    def norm(t, w):
        t32 = t.to(torch.float32 if dtype != torch.float64 else dtype)
        return (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + c["eps"])).to(t.dtype) * w

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for l in range(c["layers"]):
            L = lambda k: p[f"layers.{l}.{k}"]
            y = norm(x, L("attention_norm"))
            q = torch.nn.functional.linear(y, L("q"), p.get(f"layers.{l}.q_bias"))
            k = torch.nn.functional.linear(y, L("k"), p.get(f"layers.{l}.k_bias"))
            v = torch.nn.functional.linear(y, L("v"), p.get(f"layers.{l}.v_bias"))
            q = rope(q.view(b, n, h, hd).transpose(1, 2))
            k = rope(k.view(b, n, kv, hd).transpose(1, 2)).repeat_interleave(h // kv, dim=1)
            v = v.view(b, n, kv, hd).transpose(1, 2).repeat_interleave(h // kv, dim=1)
            s = (q @ k.transpose(-1, -2)) / hd ** 0.5
            s = s.masked_fill(~allowed[:, None], float("-inf"))
            a = torch.softmax(s.float() if autocast else s, dim=-1).to(v.dtype) @ v
            x = x + torch.nn.functional.linear(a.transpose(1, 2).reshape(b, n, h * hd), L("o"))
            y = norm(x, L("ffn_norm"))
            x = x + torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(y, L("gate"))) * torch.nn.functional.linear(y, L("up")), L("down"))
        logits = torch.nn.functional.linear(norm(x, p["final_norm"]), p["classifier"] if "classifier" in p else p["embedding"])
    logq = torch.log_softmax(logits.to(torch.float64 if dtype == torch.float64 else torch.float32).view(b * n, -1), dim=-1)
    w = torch.tensor(batch["weights"], dtype=logq.dtype, device=device)
    rows = torch.tensor(batch["teacher_rows"], device=device)
    targets = torch.tensor(batch["targets"], device=device)
    loss = torch.zeros((), dtype=logq.dtype, device=device)
    ce = rows < 0
    if (ce & (w > 0)).any():
        idx = torch.nonzero(ce & (w > 0)).squeeze(1)
        loss = loss - (w[idx] * logq[idx, targets[idx]]).sum()
    if (~ce).any():
        idx = torch.nonzero(~ce).squeeze(1)
        pt = torch.tensor(teacher, dtype=logq.dtype, device=device).view(-1, logq.shape[1])[rows[idx]]
        kl = (pt * (torch.log(pt.clamp(min=1e-30)) - logq[idx])).sum(-1)
        loss = loss + (w[idx] * kl).sum()
    return loss * batch["scale"]


def relative(a, ref):
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    norm = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / norm if norm > 0 else np.linalg.norm(a - ref)


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for directory in sys.argv[1:]:
        meta, arrays = load(directory)
        c, tensors, batch = meta["config"], meta["tensors"], meta["batch"]
        teacher = arrays.get("teacher", np.zeros(1, np.float32))
        reference = arrays["cpu_f64"]
        print(f"{directory}: hidden {c['hidden']}, {c['layers']} layers, vocab {c['vocab']}, batch {batch['sequences']}x{batch['length']}")
        runs = {}
        for label, dtype, device, autocast in [("torch f64", torch.float64, "cuda", False), ("torch f32", torch.float32, "cuda", False),
                                               ("torch bf16 autocast", torch.float32, "cuda", True)]:
            p = unpack(arrays["model"], tensors, dtype, device)
            loss = forward(c, p, batch, teacher, dtype, device, autocast)
            loss.backward()
            grads = np.zeros_like(arrays["model"])
            for name, (offset, *shape) in tensors.items():
                g = p[name].grad
                if g is not None:
                    grads[offset:offset + int(np.prod(shape))] = g.detach().double().cpu().numpy().ravel()
            runs[label] = (float(loss), grads)
        for name in sorted(n for n in arrays if n.startswith("gpu_")):
            runs["ours " + name[4:].replace("_", " ")] = (float("nan"), arrays[name])
        print(f"  {'gradients':24s} {'vs CPU float64: worst tensor':>34s} {'median':>9s}   vs torch same precision")
        for label, (loss, grads) in runs.items():
            errors = {n: relative(grads[o:o + int(np.prod(s))], reference[o:o + int(np.prod(s))]) for n, (o, *s) in tensors.items()}
            worst = max(errors, key=errors.get)
            peer = "torch f32" if label.startswith("ours f32") else "torch bf16 autocast" if label.startswith("ours bf16") else None
            versus = ""
            if peer:
                pg = runs[peer][1]
                pe = {n: relative(grads[o:o + int(np.prod(s))], pg[o:o + int(np.prod(s))]) for n, (o, *s) in tensors.items()}
                versus = f"worst {max(pe.values()):.2e} ({max(pe, key=pe.get)})"
            loss_text = f"loss {loss:.6f}" if loss == loss else ""
            print(f"  {label:24s} {worst:>22s} {errors[worst]:.2e} {np.median(list(errors.values())):9.2e}   {versus} {loss_text}")


if __name__ == "__main__":
    main()
