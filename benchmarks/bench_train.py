"""Training throughput: tokens/s and MFU of full optimizer steps (forward, backward, Muon+AdamW) per depth.

    python benchmarks/bench_train.py                              # depths 12 and 20 on the GPU, synthetic tokens
    python benchmarks/bench_train.py --depths 4,8,12 --steps 30 --device-batch-size 16
    python benchmarks/bench_train.py --data demo                  # batches from the real packing loader instead

What one measured step is: `device_batch_size` rows of `max_seq_len` tokens, bf16 compute on CUDA
(fp32 on CPU), the model compiled with torch.compile (CUDA), one optimizer step (no accumulation).
The first `--warmup` steps (compilation) are not timed. MFU = FLOPs per token (the model's
6·matmul params + attention term) × tokens/s / peak (989 TFLOP/s for an H100 SXM, as the reference
reports it). Prints one table.
"""

from __future__ import annotations

import argparse
import gc
import time


def bench_depth(depth: int, args, device: str, vocab_size: int, loader_factory=None) -> dict:
    import torch

    from nanochat.common.device import choose_dtype
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.optim import build_optimizer
    from nanochat.train.pretrain_config import optimizer_settings

    dtype = choose_dtype(device.split(":")[0]).dtype
    config = GPTConfig.from_depth(depth, vocab_size, args.max_seq_len, window_pattern=args.window_pattern)
    model = build_model(config, device, init=True, dtype=dtype, seed=0)
    opt = build_optimizer(model, **optimizer_settings())
    run = torch.compile(model, dynamic=False) if args.compile and device.startswith("cuda") else model
    B, T = args.device_batch_size, args.max_seq_len
    if loader_factory is None:
        g = torch.Generator(device="cpu").manual_seed(0)
        data = torch.randint(0, vocab_size, (args.warmup + args.steps, B, T + 1), generator=g)

        def batches():
            for rows in data:
                rows = rows.to(device, non_blocking=True)
                yield rows[:, :-1], rows[:, 1:]

        it = batches()
    else:
        it = loader_factory(B, T)

    def step():
        x, y = next(it)
        loss = run(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(args.warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        loss.item()
        sync()
        dt = (time.perf_counter() - t0) / args.steps
    except torch.OutOfMemoryError:
        return {"depth": depth, "error": f"out of memory at device batch {B}; try --device-batch-size {max(1, B // 2)}"}
    finally:
        if loader_factory is not None and hasattr(it, "close"):
            it.close()
    tok_s = B * T / dt
    flops = model.flops_per_token()
    from nanochat.common.device import peak_flops

    peak = peak_flops(device.split(":")[0])
    out = {
        "depth": depth,
        "width": config.n_embd,
        "params": model.param_counts()["total"],
        "flops_per_token": flops,
        "step_ms": dt * 1000,
        "tok_s": tok_s,
        "mfu": flops * tok_s / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="12,20", help="comma-separated depths")
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--vocab-size", type=int, default=32768, help="synthetic data only; --data uses the tokenizer's")
    p.add_argument("--window-pattern", default="SSSL")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=None, help="demo/web: real packed batches (needs a tokenizer in NANOCHAT_HOME)")
    args = p.parse_args()

    import torch

    from nanochat.common.device import detect_device
    from nanochat.common.logging import console, table

    device_type = detect_device(args.device)
    device = "cuda:0" if device_type == "cuda" else device_type
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")
    vocab, factory = args.vocab_size, None
    if args.data:  # real packed batches from the loader instead of synthetic tokens
        from nanochat.data.corpus import open_corpus
        from nanochat.data.loader import PackingLoader
        from nanochat.data.tokenizer import get_tokenizer

        tok = get_tokenizer()
        vocab = tok.vocab_size

        def real_batches(B, T):
            return PackingLoader(open_corpus(args.data, "train"), tok, B, T, device=device)

        factory = real_batches

    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        r = bench_depth(depth, args, device, vocab, factory)
        gc.collect()  # the depth's model and optimizer are gone with bench_depth's frame
        if device_type == "cuda":
            torch.cuda.empty_cache()
        if "error" in r:
            rows.append([depth, "-", "-", "-", "-", "-", r["error"]])
            continue
        rows.append([
            depth, r["width"], f"{r['params'] / 1e6:.1f}M", f"{r['step_ms']:.1f}", f"{r['tok_s']:,.0f}",
            f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-",
            f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-",
        ])  # fmt: skip
    name = torch.cuda.get_device_name(0) if device_type == "cuda" else device_type
    title = (f"training throughput on {name}: batch {args.device_batch_size}×{args.max_seq_len}, "
             f"{'compiled' if args.compile and device_type == 'cuda' else 'eager'}, {'data ' + args.data if args.data else 'synthetic tokens'}")  # fmt: skip
    console().print(table(title, rows, ["depth", "width", "params", "step ms", "tokens/s", "MFU", "peak GiB"]))


if __name__ == "__main__":
    main()
