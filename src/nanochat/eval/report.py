"""The report card: every stage records a section; `nanochat report` turns them into report.md.

A section is one JSON file, `<home>/report/sections/<name>.json`, written atomically (rank 0 only):

    {"name": "pretrain", "title": "Base model training", "updated": "2026-11-25T16:00:00Z",
     "data":   {"depth": 20, "total_time_s": 3600.0, ..., "results": {KEY: METRIC, ...}},
     "series": {"train_loss": [[step, value], ...], "val_bpb": [[step, value], ...]}}

`record_section(name, data, series=None)` merges into the existing file (the entries of
`data["results"]` one by one, every other key replaced), so a stage may record its configuration at
the start and its results at the end. Any stage may record a section: a scalar or string value is
a bullet, a string with a newline is markdown (a table, say) placed as a block.

Measured numbers go in `data["results"]`, each made by `metric()`: a value with its name, kind,
unit and sample count (`val bpb on 8,192 tokens`, `ARC-Easy accuracy on 200 questions`), the step
of the checkpoint, its data source and, for tasks with one, the chance level. They are shown as a
table in their section, and the summary table (metric x BASE/SFT/RL) takes the ones marked
`summary` from the training section and the eval section of each stage (the eval's entry wins for
the same key: one number per checkpoint). `data["core_tasks"]` ({task: {accuracy, centered,
examples}}) is the per-task CORE table; `data["series_labels"]` names the y axis of a series.

Names the report knows, in its order: environment, tokenizer, tokenizer-eval, pretrain, eval-base,
sft, eval-sft, rl, eval-rl (any other name is added after them). `speedrun` holds the wall time of
every stage of a speedrun, measured around each stage's process (`{"stages": [[name, seconds],
...], "total_s": sum}`); it is shown as the Timings table and is the total for the cost estimate.
Without it, Timings lists the `total_time_s` each stage recorded on its own clock.

`generate_report()` writes `<home>/report/report.md`, with one PNG per recorded series and bar
charts per eval section (one per kind of metric) under `<home>/report/plots/` (matplotlib is
optional: without it the report says the plots were skipped).
"""

from __future__ import annotations

import importlib.util
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
    "speedrun": "Timings",
}
# the summary's rows come in this order (keys of `results`); other summary results follow
def summary_order() -> tuple[str, ...]:
    """The summary's row order: base-model metrics, then the chat tasks as registered, then ChatCORE."""
    from nanochat.tasks.registry import task_names

    return ("core", "val_bpb", "chat_val_bpb") + task_names() + ("chatcore",)
STAGES = (("BASE", "eval-base", "pretrain"), ("SFT", "eval-sft", "sft"), ("RL", "eval-rl", "rl"))
SERIES_LABELS = {
    "train_loss": "train loss (nats per token)",
    "val_bpb": "val bpb (bits per byte)",
    "core": "CORE (centered accuracy)",
    "reward": "mean reward",
    "gsm8k_pass@1": "GSM8K pass@1 (held out)",
    "demo-arith_pass@1": "DemoArith pass@1 (held out)",
}
# hourly price of one GPU, in US dollars (typical cloud on-demand rates)
GPU_HOURLY_USD = {"H100": 3.00, "H200": 3.50, "A100": 1.79, "V100": 0.55}
DEFAULT_GPU_HOURLY_USD = 2.00
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
HIDDEN_KEYS = ("results", "core_tasks", "series_labels")  # shown as tables or axis labels, not as bullets


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


def metric(
    name: str,
    value: float | None,
    count: int | None = None,
    unit: str | None = None,
    kind: str = "",
    step: int | None = None,
    source: str | None = None,
    chance: float | None = None,
    summary: bool = True,
) -> dict:
    """One measured number for `data["results"]`: `name` and `kind` say what it is ("ARC-Easy",
    "accuracy"), `count` and `unit` what it was measured on (200 "questions"), `chance` the score
    of guessing (for the bar charts), `summary` whether it belongs in the summary table."""
    return {"name": name, "kind": kind, "value": value, "count": count, "unit": unit, "step": step, "source": source, "chance": chance, "summary": summary}


def metric_label(m: dict, count: bool = True) -> str:
    """`ARC-Easy accuracy on 200 questions`, `val bpb on 8,192 tokens`, `ChatCORE (partial: 2 of 6 tasks)`."""
    label = m.get("name") or "?"
    if m.get("kind") and m["kind"] not in label:
        label += f" {m['kind']}"
    if count and m.get("unit"):
        label += f" on {m['count']:,} {m['unit']}" if isinstance(m.get("count"), int) else f" ({m['unit']})"
    return label


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
    new = _clean(data or {})
    results = new.pop("results", None)
    section["data"].update(new)
    if results:
        if not isinstance(results, dict):
            raise NanochatError(f"report section {name!r}: results must be a dict of metric() entries, got {type(results).__name__}")
        merged = section["data"].get("results")
        section["data"]["results"] = {**(merged if isinstance(merged, dict) else {}), **results}
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
    if not isinstance(s["data"].get("results", {}), dict):
        raise NanochatError(f"report section {path} has results that are not a dict; delete it and re-run the stage that wrote it")
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


def fmt_seconds(seconds: float) -> str:
    """Wall time as the speedrun prints and the card shows it: `3m05s (185.2 s)`."""
    return f"{fmt_duration(seconds)} ({seconds:.1f} s)"


def gpu_hourly(gpu_name: str | None) -> float:
    if not gpu_name:
        return DEFAULT_GPU_HOURLY_USD
    for key, price in GPU_HOURLY_USD.items():
        if key in gpu_name:
            return price
    return DEFAULT_GPU_HOURLY_USD


def results_of(section: dict | None) -> dict[str, dict]:
    """A section's results, those the summary knows first, in its order (the file keeps keys sorted)."""
    res = (section or {}).get("data", {}).get("results")
    if not isinstance(res, dict):
        return {}
    rank = {k: i for i, k in enumerate(summary_order())}
    return {k: res[k] for k in sorted(res, key=lambda k: (rank.get(k, len(rank)), k)) if isinstance(res[k], dict)}


def summary_table(sections: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Metric x stage table; a stage column appears when that stage recorded anything.

    A row's label names the metric with its unit and sample count when they are the same in every
    column; otherwise each cell carries its own (`0.5000 (on 200 questions)`)."""
    stages = [(label, ev, st) for label, ev, st in STAGES if ev in sections or st in sections]
    per_stage = []
    for _, ev, st in stages:
        merged = {k: m for k, m in results_of(sections.get(st)).items() if m.get("summary", True)}
        merged.update({k: m for k, m in results_of(sections.get(ev)).items() if m.get("summary", True)})
        per_stage.append({k: m for k, m in merged.items() if m.get("value") is not None})
    order = summary_order()
    keys = [k for k in order if any(k in s for s in per_stage)]
    keys += [k for s in per_stage for k in s if k not in keys and k not in order]
    keys = list(dict.fromkeys(keys))
    headers = ["Metric"] + [label for label, _, _ in stages]
    rows = []
    for key in keys:
        present = [s[key] for s in per_stage if key in s]
        labels = {metric_label(m) for m in present}
        if len(labels) == 1:
            rows.append([labels.pop()] + [fmt(s[key]["value"]) if key in s else "-" for s in per_stage])
            continue
        bases = {metric_label(m, count=False) for m in present}
        row = bases.pop() if len(bases) == 1 else present[0]["name"].split(" (")[0]
        cells = []
        for s in per_stage:
            if key not in s:
                cells.append("-")
                continue
            full = metric_label(s[key])
            rest = full[len(row) :].strip() if full.startswith(row) else full
            cells.append(fmt(s[key]["value"]) + ("" if not rest else f" {rest}" if rest.startswith("(") else f" ({rest})"))
        rows.append([row] + cells)
    return headers, rows


def timings(sections: dict[str, dict]) -> tuple[str, list[list[str]], float] | None:
    """(caption, rows, total seconds) of the Timings table, or None when nothing recorded a time."""
    sr = sections.get("speedrun", {}).get("data", {})
    stages = sr.get("stages")
    if isinstance(stages, list) and stages:
        pairs = [(str(n), float(s)) for n, s in stages]
        total = sum(s for _, s in pairs)
        rows = [[n, fmt_seconds(s)] for n, s in pairs] + [["**Total**", f"**{fmt_seconds(total)}**"]]
        return "Wall time of every stage, measured by `nanochat speedrun` around the stage's process.", rows, total
    timed = [(s["title"], float(s["data"]["total_time_s"])) for n, s in sections.items() if isinstance(s["data"].get("total_time_s"), (int, float))]
    if not timed:
        return None
    total = sum(t for _, t in timed)
    rows = [[t, fmt_seconds(s)] for t, s in timed] + [["**Sum**", f"**{fmt_seconds(total)}**"]]
    return "Each stage's own clock (process start-up and model loading not included; `nanochat speedrun` measures whole stages).", rows, total


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def results_table(results: dict[str, dict]) -> str:
    rows = []
    for m in results.values():
        rows.append([metric_label(m), fmt(m.get("value")), "-" if m.get("step") is None else str(m["step"]), m.get("source") or "-"])
    return _md_table(["Metric", "Value", "Step", "Data"], rows)


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


def series_label(section: dict, key: str) -> str:
    custom = section["data"].get("series_labels")
    if isinstance(custom, dict) and isinstance(custom.get(key), str):
        return custom[key]
    return SERIES_LABELS.get(key, key)


def series_figure(plt, section: dict, key: str):
    points = [(x, y) for x, y in section["series"][key] if x is not None and y is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
    ax.set_title(f"{section['title']}: {series_label(section, key)}")
    ax.set_xlabel("step")
    ax.set_ylabel(series_label(section, key))
    ax.grid(alpha=0.3)
    return fig, ax


def bar_charts(section: dict) -> list[dict]:
    """The bar charts of an eval section, one per kind of metric (accuracies apart from pass@k, CORE's
    centered accuracies apart from both; composite scores and bpb are never bars): each a dict with
    `slug`, `title`, `ylabel`, `bars` {task: value}, `chance` {task: level} (empty: no chance level)
    and `ylim` (None: fitted to the values)."""
    charts = []
    core_tasks = section["data"].get("core_tasks")
    if isinstance(core_tasks, dict) and core_tasks:
        vals = {k: v["centered"] for k, v in core_tasks.items() if isinstance(v, dict) and isinstance(v.get("centered"), (int, float))}
        counts = {v.get("examples") for v in core_tasks.values() if isinstance(v, dict)}
        on = f" on {counts.pop():,} examples each" if len(counts) == 1 and None not in counts else ""
        if vals:
            # centering maps each task's chance accuracy to 0
            charts.append({"slug": "core", "title": f"{section['title']}: CORE tasks", "ylabel": f"centered accuracy{on}", "bars": vals,
                           "chance": {k: 0.0 for k in vals}, "chance_label": "chance (0 once centered)", "ylim": None})  # fmt: skip
    by_kind: dict[str, list[dict]] = {}
    for key, m in results_of(section).items():
        if key in ("core", "chatcore") or m.get("unit") in (None, "tokens") or not isinstance(m.get("value"), (int, float)):
            continue
        by_kind.setdefault(m.get("kind") or "score", []).append(m)
    for kind, ms in by_kind.items():
        counts = {(m.get("count"), m.get("unit")) for m in ms}
        on = f" on {next(iter(counts))[0]:,} {next(iter(counts))[1]} each" if len(counts) == 1 and isinstance(next(iter(counts))[0], int) else ""
        chance = {m["name"]: m["chance"] for m in ms if isinstance(m.get("chance"), (int, float))}
        charts.append({"slug": re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "score", "title": f"{section['title']}: {kind}",
                       "ylabel": f"{kind}{on}", "bars": {m["name"]: m["value"] for m in ms}, "chance": chance, "ylim": (0.0, 1.0)})  # fmt: skip
    return charts


def bar_figure(plt, chart: dict):
    names, values = list(chart["bars"]), list(chart["bars"].values())
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 3.5))
    xs = range(len(names))
    ax.bar(xs, values, color="#4c72b0", label=chart["ylabel"].split(" on ")[0])
    chance = chart["chance"]
    if chance:
        levels = set(chance.values())
        if len(levels) == 1 and len(chance) == len(names):
            level = levels.pop()
            ax.axhline(level, color="#c44e52", linestyle="--", linewidth=1.2, label=chart.get("chance_label") or f"chance ({level:g})")
        else:  # a short line over each bar that has a chance level
            labelled = False
            for i, n in enumerate(names):
                if n in chance:
                    ax.hlines(chance[n], i - 0.4, i + 0.4, color="#c44e52", linestyle="--", linewidth=1.2, label=None if labelled else "chance")
                    labelled = True
        ax.legend(fontsize=7, loc="best")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=8)
    ax.set_title(chart["title"])
    ax.set_xlabel("task")
    ax.set_ylabel(chart["ylabel"])
    ax.axhline(0, color="black", linewidth=0.5)
    if chart.get("ylim"):
        ax.set_ylim(*chart["ylim"])
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


# --- the report -----------------------------------------------------------------------------------


def generate_report(out: Path | None = None, draw: bool = True) -> tuple[Path, list[Path], bool]:
    """Write report.md; returns (its path, the plot files, whether plots were drawn).

    `draw=False` rewrites the text only, linking the plot files an earlier call drew (the speedrun
    uses it to add the report stage's own time to the card without drawing everything again)."""
    sections = load_sections()
    if not sections:
        raise NanochatError(f"nothing recorded yet in {sections_dir()}; run a stage first (e.g. `nanochat pretrain` or `nanochat eval`), then `nanochat report`")
    out = out or paths.report_dir() / "report.md"
    plot_dir = out.parent / "plots"
    plt = _matplotlib() if draw else None
    can_plot = plt is not None if draw else importlib.util.find_spec("matplotlib") is not None
    images: list[Path] = []
    from nanochat import __version__

    def figure(path: Path, make) -> Path | None:
        if plt is not None:
            fig, _ = make()
            images.append(_save(plt, fig, path))
            return path
        if not draw and path.is_file():
            images.append(path)
            return path
        return None

    lines = ["# nanochat report card", "", f"Generated {_now()} by nanochat {__version__}.", ""]
    if not can_plot:
        lines += ["*Plots skipped: matplotlib is not installed (`pip install 'nanochat[plots]'`).*", ""]
    headers, rows = summary_table(sections)
    if rows:
        lines += ["## Summary", "", _md_table(headers, rows), ""]
        labels = {m["name"] for s in sections.values() for k, m in results_of(s).items() if k == "core" and m.get("name")}
        for label in sorted(labels):
            if label != "CORE":
                lines += [f"CORE here is **{label}**: not comparable with reference CORE numbers.", ""]
    timing = timings(sections)
    if timing:
        caption, trows, total = timing
        lines += ["## Timings", "", caption, "", _md_table(["Stage", "Wall clock"], trows), ""]
        env = sections.get("environment", {}).get("data", {})
        gpus = env.get("gpu_count") or 0
        if gpus:
            rate = gpu_hourly(env.get("gpu_name"))
            lines += [f"Estimated cost: {gpus} x {env.get('gpu_name', 'GPU')} at ${rate:.2f}/GPU-hour for {fmt_duration(total)} = **${gpus * rate * total / 3600:.2f}**.", ""]
    for name, s in sections.items():
        if name == "speedrun":
            continue  # it is the Timings table above
        lines += [f"## {s['title']}", "", f"recorded: {s.get('updated', '-')}", ""]
        data = {k: v for k, v in s["data"].items() if k not in HIDDEN_KEYS}
        blocks = {k: v for k, v in data.items() if isinstance(v, str) and "\n" in v}  # markdown (tables)
        lines += [f"- {k}: {fmt(v)}" for k, v in data.items() if k not in blocks]
        results = results_of(s)
        if results:
            lines += ["", results_table(results)]
        for k, v in blocks.items():
            lines += ["", f"**{k}**", "", v.strip()]
        core_tasks = s["data"].get("core_tasks")
        if isinstance(core_tasks, dict) and core_tasks:
            trows = [[k, fmt(v.get("accuracy")), fmt(v.get("centered")), fmt(v.get("examples"))] for k, v in core_tasks.items() if isinstance(v, dict)]
            lines += ["", _md_table(["CORE task", "accuracy", "centered accuracy", "examples"], trows)]
        lines.append("")
        for key in s["series"]:
            if s["series"][key]:
                p = figure(plot_dir / f"{name}-{key}.png", lambda key=key: series_figure(plt, s, key))
                if p:
                    lines += [f"![{s['title']}: {series_label(s, key)}](plots/{p.name})", ""]
        for chart in bar_charts(s) if name.startswith("eval") else []:
            p = figure(plot_dir / f"{name}-{chart['slug']}.png", lambda chart=chart: bar_figure(plt, chart))
            if p:
                lines += [f"![{chart['title']}](plots/{p.name})", ""]
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out, images, can_plot
