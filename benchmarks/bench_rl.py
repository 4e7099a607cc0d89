"""RL step time: rollouts (Engine sampling with the calculator) and forward/backward at the reference defaults.

Run: PYTHONPATH=src python benchmarks/bench_rl.py [--depth 20] [--steps 3] [--device cuda]
Prints one table. A randomly initialised model of the given depth is saved as a throwaway sft
checkpoint in a temporary NANOCHAT_HOME (tokenizer trained on the packaged demo corpus), then
`nanochat rl`'s loop runs `--steps` steps offline (train partition carved from the GSM8K test split,
no eval). A random model never stops early, so every rollout runs the full --max-new-tokens: the
worst case. Rewards are 0, so this measures speed only. The first step includes CUDA-graph capture.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--examples-per-step", type=int, default=16)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--device-batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    os.environ["NANOCHAT_OFFLINE"] = "1"
    os.environ["NANOCHAT_HOME"] = tempfile.mkdtemp(prefix="nanochat-bench-rl-")
    import torch
    from rich.console import Console
    from rich.table import Table

    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.common.device import detect_device
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model
    from nanochat.train.loop import read_metrics
    from nanochat.train.rl import RLConfig, run_rl

    device = detect_device(args.device)
    docs = [t for t, _ in open_corpus("demo", "train").iter_docs(loop=False)]
    tok = Tokenizer.train(docs, args.vocab)
    tok.save(paths.tokenizer_dir())
    config = GPTConfig.from_depth(args.depth, vocab_size=tok.vocab_size, sequence_len=args.seq_len)
    tag = f"d{args.depth}"
    model = build_model(config, "cpu", seed=0)
    save_checkpoint(paths.checkpoints_dir("sft") / tag, 0, model_state=model.state_dict(), meta={"model_config": config.to_dict()})
    del model
    run_rl(RLConfig(
        model_tag=tag, train_split="train-from-test", num_iterations=args.steps, examples_per_step=args.examples_per_step,
        num_samples=args.num_samples, device_batch_size=args.device_batch_size, max_new_tokens=args.max_new_tokens,
        eval_every=-1, save_every=-1, resume="never", device=device,
    ))  # fmt: skip
    records = [m for m in read_metrics(paths.checkpoints_dir("rl") / tag / "metrics.jsonl") if m["kind"] == "train"]
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    t = Table(title=f"nanochat rl step time: depth {args.depth}, {args.examples_per_step}×{args.num_samples} rollouts of ≤{args.max_new_tokens} tokens, batch {args.device_batch_size}, {name}")
    for col in ("step", "step time", "sampling", "train", "sampled tok/s", "mean length"):
        t.add_column(col, justify="right")
    for m in records:
        t.add_row(str(m["step"]), f"{m['dt']:.2f}s", f"{m['rollout_s']:.2f}s", f"{m['dt'] - m['rollout_s']:.2f}s",
                  f"{m['sampled_tokens'] / m['dt']:,.0f}", f"{m['sequence_length']:.0f}")  # fmt: skip
    if device == "cuda":
        t.caption = f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    Console().print(t)


if __name__ == "__main__":
    main()
