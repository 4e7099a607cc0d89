"""Training step time of the GPT on one GPU (bf16 + torch.compile), per depth and attention back end.

    python benchmarks/bench_model.py                       # d12 and d20, every back end available, B=32, T=2048
    python benchmarks/bench_model.py --depths 12 --backends flex,sdpa --batch 16 --steps 10

For each (depth, back end): checks first that the back end's attention matches a float64 reference on the
model's own shapes (bf16: max abs error, and the windowed layers' too), then compiles the model, warms up, and
times forward+backward and the optimizer step separately. Prints one table: ms per step, tokens/s, MFU against
989 TFLOPS (the reference's convention; its d12 figure is ~400K tok/s, 31% MFU; d20 133K tok/s, 38.8%),
peak memory.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from nanochat.model import GPTConfig, build_model
from nanochat.model import attention as A
from nanochat.optim import build_optimizer
from nanochat.train.pretrain_config import optimizer_settings

PEAK = 989e12


def reference_attention(q, k, v, window):
    """float64 SDPA with an explicit mask (the math kernel), on (B, T, H, D)."""
    T = q.shape[1]
    i = torch.arange(T, device=q.device)
    delta = i[:, None] - i[None, :]
    mask = (delta >= 0) & (delta <= window)
    out = F.scaled_dot_product_attention(
        q.double().transpose(1, 2), k.double().transpose(1, 2), v.double().transpose(1, 2), attn_mask=mask, enable_gqa=q.shape[2] != k.shape[2]
    )
    return out.transpose(1, 2)


def attention_error(config: GPTConfig, backend: str) -> float:
    """Max abs error (bf16 back end vs float64) over the model's distinct windows, B=2."""
    g = torch.Generator(device="cuda").manual_seed(0)
    H, Hkv, D, T = config.n_head, config.n_kv_head, config.head_dim, config.sequence_len
    worst = 0.0
    for window in sorted(set(config.window_sizes())):
        q = torch.randn(2, T, H, D, device="cuda", generator=g).bfloat16().requires_grad_(True)
        k = torch.randn(2, T, Hkv, D, device="cuda", generator=g).bfloat16()
        v = torch.randn(2, T, Hkv, D, device="cuda", generator=g).bfloat16()
        out = A.attention(q, k, v, window, backend)
        worst = max(worst, (out.double() - reference_attention(q.detach(), k, v, window)).abs().max().item())
    return worst


def bench(depth: int, backend: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
    torch._dynamo.reset()
    config = GPTConfig.from_depth(depth, 32768, seq)
    err = attention_error(config, backend)
    model = build_model(config, "cuda", dtype=torch.bfloat16, attn_backend=backend, seed=0)
    opt = build_optimizer(model, **optimizer_settings())
    compiled = torch.compile(model, dynamic=False)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 32768, (batch, seq), device="cuda", generator=gen)
    y = torch.randint(0, 32768, (batch, seq), device="cuda", generator=gen)
    t0 = time.perf_counter()
    for _ in range(warmup):
        compiled(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    start, mid, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    fb_ms, opt_ms = [], []
    for _ in range(steps):
        start.record()
        loss = compiled(x, y)
        loss.backward()
        mid.record()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end.record()
        torch.cuda.synchronize()
        fb_ms.append(start.elapsed_time(mid))
        opt_ms.append(mid.elapsed_time(end))
    fb, op = sorted(fb_ms)[len(fb_ms) // 2], sorted(opt_ms)[len(opt_ms) // 2]
    tokens = batch * seq
    tok_s = tokens / ((fb + op) / 1000)
    return {
        "depth": f"d{depth}",
        "backend": backend,
        "attn err": f"{err:.1e}",
        "fwd+bwd ms": f"{fb:.1f}",
        "optim ms": f"{op:.1f}",
        "tok/s": f"{tok_s / 1e3:.0f}K",
        "MFU": f"{100 * model.flops_per_token() * tok_s / PEAK:.1f}%",
        "peak GiB": f"{torch.cuda.max_memory_allocated() / 2**30:.1f}",
        "compile s": f"{compile_s:.0f}",
        "loss": f"{loss.item():.3f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="12,20")
    ap.add_argument("--backends", default="all", help="comma list of fa3,flex,sdpa or 'all' (those available)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_model.py needs a CUDA GPU")
    torch.set_float32_matmul_precision("high")
    backends = A.available_backends("cuda") if args.backends == "all" else args.backends.split(",")
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        for backend in backends:
            try:
                rows.append(bench(depth, backend, args.batch, args.seq, args.steps, args.warmup))
            except torch.OutOfMemoryError:
                rows.append({"depth": f"d{depth}", "backend": backend, "attn err": "OOM (lower --batch)"})
            torch.cuda.empty_cache()
            print(rows[-1], flush=True)
    from rich.console import Console
    from rich.table import Table

    cols = ["depth", "backend", "attn err", "fwd+bwd ms", "optim ms", "tok/s", "MFU", "peak GiB", "compile s", "loss"]
    t = Table(title=f"GPT training step on {torch.cuda.get_device_name(0)}, bf16 + torch.compile, B={args.batch}, T={args.seq} (ln V = {math.log(32768):.3f})")
    for c in cols:
        t.add_column(c, justify="left" if c in ("depth", "backend") else "right")
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
