"""Facts about this machine for `nanochat env` (a service: it looks at model, data and checkpoints)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from nanochat import __version__
from nanochat.common import paths


def _attention_backend() -> tuple[str, str]:
    try:
        from nanochat.model.attention import available_backends, default_backend  # type: ignore[attr-defined]
    except ImportError:
        return "sdpa", "nanochat.model.attention not built yet; torch SDPA is the fallback"
    return default_backend(), ", ".join(available_backends())


def _checkpoints() -> list[str]:
    root = paths.checkpoints_dir()
    found = []
    for source in ("base", "sft", "rl"):
        d = root / source
        if d.is_dir():
            for tag in sorted(p for p in d.iterdir() if p.is_dir()):
                steps = sorted(p.name for p in tag.iterdir() if p.is_dir() and p.name.startswith("step_"))
                if steps:
                    found.append(f"{source}/{tag.name} ({len(steps)} saved, newest {steps[-1]})")
    return found


def _datasets() -> str:
    try:
        from nanochat.data.catalog import list_datasets
    except ImportError:
        return _describe_dir(paths.data_dir())
    return "; ".join(f"{d.name} ({d.kind}, {d.train_shards} train shards, {d.size_text})" for d in list_datasets())


def _describe_dir(path: Path) -> str:
    if not path.exists():
        return "absent"
    files = [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    return f"{len(files)} files, {size / 1e6:.1f} MB"


def collect() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("nanochat", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", f"{platform.system()} {platform.machine()}"),
    ]
    try:
        import os

        rows.append(("cpu cores", str(os.cpu_count())))
    except Exception:
        pass
    import torch

    from nanochat.common.device import choose_dtype, detect_device, peak_flops

    rows.append(("torch", torch.__version__))
    cuda = torch.cuda.is_available()
    rows.append(("CUDA", f"{torch.version.cuda} (available)" if cuda else f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda else "not available (CPU build of torch)"))
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"))
    device = detect_device("auto")
    choice = choose_dtype(device)
    rows.append(("device", device))
    rows.append(("dtype", f"{choice.dtype_name} ({choice.reason})"))
    peak = peak_flops(device)
    rows.append(("peak bf16 (for MFU)", f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (MFU not shown)"))
    backend, detail = _attention_backend()
    rows.append(("attention", f"{backend} (available: {detail})"))
    home = paths.home()
    rows.append(("home", f"{home} {'(NANOCHAT_HOME)' if 'NANOCHAT_HOME' in __import__('os').environ else '(default; set NANOCHAT_HOME to move it)'}"))
    tok = paths.tokenizer_dir()
    rows.append(("tokenizer", "trained" if (tok / "tokenizer.json").exists() else "absent (nanochat tokenize-train)"))
    rows.append(("data", _datasets()))
    rows.append(("eval bundles", _describe_dir(paths.eval_dir())))
    ckpts = _checkpoints()
    rows.append(("checkpoints", "; ".join(ckpts) if ckpts else "none"))
    return rows


def render(rows: list[tuple[str, str]]) -> None:
    from nanochat.common.logging import console, table

    console().print(table("nanochat env", rows))
