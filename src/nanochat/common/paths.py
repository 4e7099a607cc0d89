"""Where nanochat keeps its files: one home folder with a fixed layout.

NANOCHAT_HOME wins (it must be a folder, or not exist yet); otherwise the platformdirs user cache folder for `nanochat`
(e.g. ~/.cache/nanochat on Linux). Layout:

    data/<dataset>/          pretraining shards (parquet)
    tokenizer/               the trained tokenizer and its token-bytes table
    checkpoints/{base,sft,rl}/<tag>/step_XXXXXX/
    eval/                    eval bundles and results
    report/                  report sections, report.md and plots
    cache/compile/           torch.compile's Inductor and Triton caches (reused by the next run)
"""

from __future__ import annotations

import os
from pathlib import Path

from nanochat.common.errors import NanochatError


def home() -> Path:
    env = os.environ.get("NANOCHAT_HOME")
    if env:
        path = Path(env).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise NanochatError(f"NANOCHAT_HOME={env} is a file, not a folder; set NANOCHAT_HOME to a folder (it is created when missing)")
        return path
    import platformdirs

    return Path(platformdirs.user_cache_dir("nanochat", appauthor=False))


def data_dir(dataset: str | None = None) -> Path:
    d = home() / "data"
    return d / dataset if dataset else d


def tokenizer_dir() -> Path:
    return home() / "tokenizer"


def checkpoints_dir(source: str | None = None) -> Path:
    d = home() / "checkpoints"
    return d / source if source else d


def eval_dir() -> Path:
    return home() / "eval"


def report_dir() -> Path:
    return home() / "report"


def resources_dir() -> Path:
    """Data packaged with nanochat (demo corpus, task sets, tokenizer files)."""
    return Path(__file__).resolve().parent.parent / "resources"


def compile_cache_dir() -> Path:
    return home() / "cache" / "compile"
