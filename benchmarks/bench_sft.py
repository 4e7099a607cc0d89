"""SFT throughput on this machine: a base model pretrained for a few steps on the demo corpus, then
`nanochat sft --data demo` (the real code paths, in process); prints one table.

    python benchmarks/bench_sft.py                      # CUDA: depth 12, 2048-token rows, compiled
    python benchmarks/bench_sft.py --depth 2 --device cpu --seq 64 --batch 4 --steps 10

What to look for: sft tok/s and MFU close to pretraining's at the same shapes (the packer runs on the
host between steps: a large gap means it is the bottleneck), padding well under 20% of the tokens,
and a finite, falling loss. Uses a throwaway NANOCHAT_HOME.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    os.environ["NANOCHAT_HOME"] = tempfile.mkdtemp(prefix="bench-sft-")

    import torch

    cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    depth = args.depth or (12 if cuda else 2)
    seq = args.seq or (2048 if cuda else 64)
    batch = args.batch or (16 if cuda else 4)
    from nanochat.common import paths
    from nanochat.common.logging import console, table
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.train.loop import read_metrics
    from nanochat.train.pretrain import PretrainConfig, run_pretrain
    from nanochat.train.sft import SFTConfig, run_sft
    from nanochat.train.sft_data import SFTPacker, sft_mixture

    Tokenizer.train(open_corpus("demo", "train").iter_texts(max_chars=5_000_000), vocab_size=8192).save(paths.tokenizer_dir())
    small = {} if cuda else {"aspect_ratio": 32, "head_dim": 32}
    pre = run_pretrain(PretrainConfig(depth=depth, data="demo", max_seq_len=seq, device_batch_size=batch, num_iterations=args.steps,
                                      eval_every=-1, sample_every=-1, device=args.device, model_tag="bench", **small))  # fmt: skip
    sft = run_sft(SFTConfig(data="demo", num_iterations=args.steps, eval_every=args.steps, device=args.device, model_tag="bench"))
    rows = []
    for name, d in (("pretrain", paths.checkpoints_dir("base") / "bench"), ("sft", paths.checkpoints_dir("sft") / "bench")):
        recs = [r for r in read_metrics(d / "metrics.jsonl") if r.get("kind") == "train"][5:]  # past compilation
        if not recs:
            continue
        tok_s = sum(r["tok_per_s"] for r in recs) / len(recs)
        mfu = [r["mfu"] for r in recs if r.get("mfu") is not None]
        rows.append((name, f"{tok_s:,.0f}", f"{100 * sum(mfu) / len(mfu):.1f}%" if mfu else "-", f"{1000 * sum(r['dt'] for r in recs) / len(recs):.0f} ms",
                     f"{recs[0]['loss']:.3f} → {recs[-1]['loss']:.3f}"))  # fmt: skip
    train, _, _ = sft_mixture("demo")
    from nanochat.data.tokenizer import get_tokenizer

    packer = SFTPacker(train, get_tokenizer(), batch, seq)
    total = pad = 0
    for _ in range(20):
        _, y = next(packer)
        total += y.numel()
        pad += int((y < 0).sum())
    console().print(table(f"SFT vs pretraining, depth {depth}, {batch}×{seq} rows, {'cuda' if cuda else 'cpu'}", rows,
                          ["stage", "tok/s", "MFU", "step", "loss"]))  # fmt: skip
    print(f"sft: untrained positions (user, BOS, padding) {100 * pad / total:.1f}% of targets; min chat val bpb {sft['chat_val_bpb_min']}; "
          f"pretrain params {pre['params']:,}")  # fmt: skip


if __name__ == "__main__":
    main()
