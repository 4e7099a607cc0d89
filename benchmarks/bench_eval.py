"""Eval speed: CORE items/s by rows per forward, categorical chat eval by batch, generative by batch.

Run: PYTHONPATH=src python benchmarks/bench_eval.py [--depth 20] [--device cuda] [--core-items 100]
Prints one table. Uses a randomly initialised model of the given depth (scores are meaningless,
only the speed counts), a tokenizer trained on the packaged Austen corpus, the packaged CORE-offline
bundle and the packaged MMLU / GSM8K test sets; no network. The generative rows need the Engine.
"""

from __future__ import annotations

import argparse
import time


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--core-items", type=int, default=100, help="items per CORE task")
    ap.add_argument("--core-rows", default="1,8,32", help="rows per forward to compare (1 = the reference's one item at a time)")
    ap.add_argument("--mmlu", type=int, default=512, help="MMLU questions")
    ap.add_argument("--gsm8k", type=int, default=64, help="GSM8K problems for the generative rows")
    ap.add_argument("--gen-batches", default="1,16")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()

    import os

    os.environ.setdefault("NANOCHAT_OFFLINE", "1")
    import torch
    from rich.console import Console
    from rich.table import Table

    from nanochat.common.device import detect_device
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.eval.chat_eval import engine_generate, run_categorical, run_generative
    from nanochat.eval.core import evaluate_core, packaged_bundle
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.mmlu import MMLU

    device = detect_device(args.device)
    dev = "cuda:0" if device == "cuda" else device
    docs = [t for t, _ in open_corpus("demo", "train").iter_docs(loop=False)]
    tok = Tokenizer.train(docs, args.vocab)
    config = GPTConfig.from_depth(args.depth, vocab_size=tok.vocab_size, sequence_len=args.seq_len)
    model = build_model(config, dev, seed=0).eval()
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    rows = []

    bundle = packaged_bundle()
    for r in [int(x) for x in args.core_rows.split(",")]:
        _sync(dev)
        t0 = time.perf_counter()
        res = evaluate_core(model, tok, bundle, dev, args.core_items, batch_rows=r)
        _sync(dev)
        dt = time.perf_counter() - t0
        n = sum(t["examples"] for t in res.tasks.values())
        rows.append((f"CORE ({len(res.tasks)} tasks x {args.core_items}), {r} row(s)/forward", f"{n} items", f"{dt:.1f} s", f"{n / dt:.1f} items/s", f"CORE {res.core:.4f}"))

    mmlu = MMLU(split="test")
    for b in (8, 32):
        _sync(dev)
        t0 = time.perf_counter()
        res = run_categorical(model, tok, mmlu, dev, batch_size=b, max_problems=args.mmlu)
        _sync(dev)
        dt = time.perf_counter() - t0
        rows.append((f"MMLU categorical, batch {b}", f"{res.total} questions", f"{dt:.1f} s", f"{res.total / dt:.1f} q/s", f"acc {res.accuracy:.3f}"))

    try:
        generate = engine_generate(model, tok, max_tokens=args.max_new_tokens, temperature=0.0)
    except Exception as e:  # the Engine is not in this build
        rows.append(("GSM8K generative", "-", "-", "-", f"skipped: {e}"))
    else:
        gsm = GSM8K(split="test")
        for b in [int(x) for x in args.gen_batches.split(",")]:
            _sync(dev)
            t0 = time.perf_counter()
            res = run_generative(generate, tok, gsm, dev, max_problems=args.gsm8k, batch_size=b, max_prompt_len=config.sequence_len)
            _sync(dev)
            dt = time.perf_counter() - t0
            rows.append((f"GSM8K generative, {b} problem(s)/batch, <= {args.max_new_tokens} new tokens", f"{res.total} problems", f"{dt:.1f} s", f"{res.total / dt:.2f} problems/s", f"pass@1 {res.accuracy:.3f}" + (f", {res.too_long} too long" if res.too_long else "")))

    t = Table(title=f"nanochat eval speed: depth {args.depth}, vocab {tok.vocab_size:,}, seq {args.seq_len}, {name}", title_justify="left")
    for col in ("what", "work", "time", "rate", "result"):
        t.add_column(col, justify="left" if col in ("what", "result") else "right")
    for r in rows:
        t.add_row(*r)
    Console().print(t)


if __name__ == "__main__":
    main()
