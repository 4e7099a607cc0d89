"""Shared by the pretraining tests: a small tokenizer trained once per session, the tiny-model flags,
and readers for what a run leaves behind (metrics.jsonl, checkpoints)."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

# depth 2, width 64, heads of 32, 64-token rows of 4: a few ms per step on one core
TINY = ["--data", "demo", "--depth", "2", "--aspect-ratio", "32", "--head-dim", "32", "--max-seq-len", "64",
        "--device-batch-size", "4", "--device", "cpu", "--warmup-steps", "5", "--tokenizer-threads", "1",
        "--sample-every", "-1", "--matrix-lr", "0.2", "--embedding-lr", "3", "--unembedding-lr", "0.08"]  # fmt: skip


@lru_cache(maxsize=1)
def session_tokenizer_dir(vocab_size: int = 512) -> Path:
    import tempfile

    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import Tokenizer

    out = Path(tempfile.mkdtemp(prefix="nanochat-test-tok-"))
    Tokenizer.train(open_corpus("demo", "train").iter_texts(max_chars=400_000), vocab_size=vocab_size).save(out)
    return out


def install_tokenizer(home: Path) -> None:
    """Put the session's tokenizer into `home`'s tokenizer folder."""
    shutil.copytree(session_tokenizer_dir(), Path(home) / "tokenizer", dirs_exist_ok=True)


def train_losses(run_dir: Path) -> dict[int, float]:
    """step → raw training loss, from a run folder's metrics.jsonl."""
    from nanochat.train.loop import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "train"}


def val_bpbs(run_dir: Path) -> dict[int, float]:
    from nanochat.train.loop import read_metrics

    return {r["step"]: r["val_bpb"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "eval"}
