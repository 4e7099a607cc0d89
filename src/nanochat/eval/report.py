"""The report card: every stage records a section; `nanochat report` turns them into report.md.

A section is one JSON file, `<home>/report/sections/<name>.json`, written atomically (rank 0 only):

    {"name": "pretrain", "title": "Base model training", "updated": "2026-11-25T16:00:00Z",
     "data":   {"depth": 20, "total_time_s": 3600.0, "min_val_bpb": 0.81, ...},   # scalars, strings
     "series": {"train_loss": [[step, value], ...], "val_bpb": [[step, value], ...]}}

A string value with a newline is markdown (a table, say) and is placed as a block under the
section's bullets. `record_section(name, data, series=None)` merges into the existing file, so a stage may record
its configuration at the start and its results at the end. Names the report knows, in its order:
environment, tokenizer, tokenizer-eval, pretrain, eval-base, sft, eval-sft, rl, eval-rl (any
other name is added after them). Keys the summary reads: in eval-* sections `core`, `core_label`,
`val_bpb` and the task names (`arc-easy`, `arc-challenge`, `mmlu`, `gsm8k`, `humaneval`,
`spellingbee`, `chatcore`); in stage sections `total_time_s` (for the timings and the cost
estimate) and `min_val_bpb`; in environment `gpu_name`, `gpu_count`.

`generate_report()` writes `<home>/report/report.md`, with one PNG per recorded series and a bar
chart per eval section under `<home>/report/plots/` (matplotlib is optional: without it the
report says the plots were skipped).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from nanochat.common import paths
from nanochat.common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from nanochat.common.errors import NanochatError

ORDER = ("environment", "tokenizer", "tokenizer-eval", "pretrain", "eval-base", "sft", "eval-sft", "rl", "eval-rl")
TITLES = {
    "environment": "Environment",
    "tokenizer": "Tokenizer training",
    "tokenizer-eval": "Tokenizer evaluation",
    "pretrain": "Base model training",
    "eval-base": "Base model evaluation",
    "sft": "Supervised fine-tuning",
    "eval-sft": "Chat evaluation (SFT)",
    "rl": "Reinforcement learning",
    "eval-rl": "Chat evaluation (RL)",
}
SUMMARY_ROWS = (
    ("CORE", "core"),
    ("val bpb", "val_bpb"),
    ("ARC-Easy", "arc-easy"),
    ("ARC-Challenge", "arc-challenge"),
    ("MMLU", "mmlu"),
    ("GSM8K", "gsm8k"),
    ("HumanEval", "humaneval"),
    ("SpellingBee", "spellingbee"),
    ("ChatCORE", "chatcore"),
)
STAGES = (("BASE", "eval-base", "pretrain"), ("SFT", "eval-sft", "sft"), ("RL", "eval-rl", "rl"))
# hourly price of one GPU, in US dollars (typical cloud on-demand rates)
GPU_HOURLY_USD = {"H100": 3.00, "H200": 3.50, "A100": 1.79, "V100": 0.55}
DEFAULT_GPU_HOURLY_USD = 2.00
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def sections_dir() -> Path:
    return paths.report_dir() / "sections"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, tuples lists, numpy/torch scalars plain numbers."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict, str)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def record_section(name: str, data: dict | None = None, series: dict[str, list] | None = None, title: str | None = None) -> Path | None:
    """Merge `data` and `series` into the report section `name` (rank 0 only; others do nothing)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if not NAME_RE.match(name):
        raise NanochatError(f"report section name {name!r} must be lower-case letters, digits, '-' or '_'")
    path = sections_dir() / f"{name}.json"
    section = load_section(path) if path.is_file() else {"name": name, "title": title or TITLES.get(name, name), "data": {}, "series": {}}
    if title:
        section["title"] = title
    section["data"].update(_clean(data or {}))
    for key, points in (series or {}).items():
        section["series"][key] = [[_clean(x), _clean(y)] for x, y in points]
    section["updated"] = _now()
    atomic_write_json(path, section)
    return path


def load_section(path: Path) -> dict:
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NanochatError(f"report section {path} is not readable JSON ({e}); delete it and re-run the stage that wrote it") from e
    if not isinstance(s, dict) or not isinstance(s.get("data", {}), dict):
        raise NanochatError(f"report section {path} is not a report section; delete it")
    s.setdefault("data", {})
    s.setdefault("series", {})
    s.setdefault("name", path.stem)
    s.setdefault("title", TITLES.get(s["name"], s["name"]))
    return s


def load_sections() -> dict[str, dict]:
    d = sections_dir()
    if not d.is_dir():
        return {}
    found = {p.stem: load_section(p) for p in sorted(d.glob("*.json"))}
    ordered = {n: found[n] for n in ORDER if n in found}
    ordered.update({n: s for n, s in found.items() if n not in ordered})
    return ordered


def record_environment() -> Path | None:
    """Record this machine (GPUs, software) as the environment section."""
    import platform

    from nanochat import __version__

    data: dict[str, Any] = {"nanochat": __version__, "python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}", "cpu_count": os.cpu_count()}
    try:
        import torch

        data["torch"] = torch.__version__
        if torch.cuda.is_available():
            data["gpu_count"] = torch.cuda.device_count()
            data["gpu_name"] = torch.cuda.get_device_name(0)
            data["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            data["cuda"] = torch.version.cuda
        else:
            data["gpu_count"] = 0
    except ImportError:
        pass
    return record_section("environment", data)


# --- formatting -----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.4g}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fmt_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}m"


def gpu_hourly(gpu_name: str | None) -> float:
    if not gpu_name:
        return DEFAULT_GPU_HOURLY_USD
    for key, price in GPU_HOURLY_USD.items():
        if key in gpu_name:
            return price
    return DEFAULT_GPU_HOURLY_USD


def summary_table(sections: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Metric x stage table; a stage column appears when that stage recorded anything."""
    stages = [(label, ev, st) for label, ev, st in STAGES if ev in sections or st in sections]
    headers = ["Metric"] + [label for label, _, _ in stages]
    rows = []
    for title, key in SUMMARY_ROWS:
        cells = []
        for _, ev, st in stages:
            v = sections.get(ev, {}).get("data", {}).get(key)
            if v is None and key == "val_bpb":
                sd = sections.get(st, {}).get("data", {})
                v = sd.get("val_bpb", sd.get("min_val_bpb"))
            cells.append(fmt(v) if v is not None else "-")
        if any(c != "-" for c in cells):
            rows.append([title] + cells)
    return headers, rows


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# --- plots ----------------------------------------------------------------------------------------


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _save(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_series(plt, section: dict, key: str, path: Path) -> Path:
    points = [(x, y) for x, y in section["series"][key] if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
    ax.set_title(f"{section['title']}: {key}")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def eval_bars(section: dict) -> dict[str, float]:
    """What an eval section's bar chart shows: per-task accuracies, or CORE's centered results."""
    data = section["data"]
    core_tasks = data.get("core_tasks")
    if isinstance(core_tasks, dict) and core_tasks:
        return {k: v for k, v in core_tasks.items() if isinstance(v, (int, float))}
    return {title: data[key] for title, key in SUMMARY_ROWS if key not in ("core", "val_bpb", "chatcore") and isinstance(data.get(key), (int, float))}


def plot_bars(plt, section: dict, values: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(values) + 2), 3.5))
    ax.bar(range(len(values)), list(values.values()), color="#4c72b0")
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(list(values.keys()), rotation=60 if len(values) > 6 else 0, ha="right" if len(values) > 6 else "center", fontsize=8)
    ax.set_title(section["title"])
    ax.axhline(0, color="black", linewidth=0.5)
    ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


# --- the report -----------------------------------------------------------------------------------


def generate_report(out: Path | None = None) -> tuple[Path, list[Path], bool]:
    """Write report.md; returns (its path, the plot files, whether plots were drawn)."""
    sections = load_sections()
    if not sections:
        raise NanochatError(f"nothing recorded yet in {sections_dir()}; run a stage first (e.g. `nanochat pretrain` or `nanochat eval`), then `nanochat report`")
    out = out or paths.report_dir() / "report.md"
    plot_dir = out.parent / "plots"
    plt = _matplotlib()
    images: list[Path] = []
    from nanochat import __version__

    lines = ["# nanochat report card", "", f"Generated {_now()} by nanochat {__version__}.", ""]
    if plt is None:
        lines += ["*Plots skipped: matplotlib is not installed (`pip install 'nanochat[plots]'`).*", ""]
    headers, rows = summary_table(sections)
    if rows:
        lines += ["## Summary", "", _md_table(headers, rows), ""]
        labels = {s["data"].get("core_label") for s in sections.values() if s["data"].get("core_label")}
        for label in sorted(labels):
            if label != "CORE":
                lines += [f"CORE here is **{label}**: not comparable with reference CORE numbers.", ""]
    # timings and cost
    timed = [(s["title"], float(s["data"]["total_time_s"])) for s in sections.values() if isinstance(s["data"].get("total_time_s"), (int, float))]
    if timed:
        total = sum(t for _, t in timed)
        lines += ["## Timings", "", _md_table(["Stage", "Wall clock"], [[t, fmt_duration(s)] for t, s in timed] + [["**Total**", f"**{fmt_duration(total)}**"]]), ""]
        env = sections.get("environment", {}).get("data", {})
        gpus = env.get("gpu_count") or 0
        if gpus:
            rate = gpu_hourly(env.get("gpu_name"))
            lines += [f"Estimated cost: {gpus} x {env.get('gpu_name', 'GPU')} at ${rate:.2f}/GPU-hour for {fmt_duration(total)} = **${gpus * rate * total / 3600:.2f}**.", ""]
    for name, s in sections.items():
        lines += [f"## {s['title']}", "", f"recorded: {s.get('updated', '-')}", ""]
        data = {k: v for k, v in s["data"].items() if k != "core_tasks"}
        blocks = {k: v for k, v in data.items() if isinstance(v, str) and "\n" in v}  # markdown (tables)
        lines += [f"- {k}: {fmt(v)}" for k, v in data.items() if k not in blocks]
        for k, v in blocks.items():
            lines += ["", f"**{k}**", "", v.strip()]
        if isinstance(s["data"].get("core_tasks"), dict):
            lines += ["", _md_table(["CORE task", "centered"], [[k, fmt(v)] for k, v in s["data"]["core_tasks"].items()])]
        lines.append("")
        if plt is None:
            continue
        for key in s["series"]:
            if s["series"][key]:
                p = plot_series(plt, s, key, plot_dir / f"{name}-{key}.png")
                images.append(p)
                lines += [f"![{s['title']}: {key}](plots/{p.name})", ""]
        bars = eval_bars(s) if name.startswith("eval") else {}
        if bars:
            p = plot_bars(plt, s, bars, plot_dir / f"{name}-bars.png")
            images.append(p)
            lines += [f"![{s['title']}](plots/{p.name})", ""]
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out, images, plt is not None
