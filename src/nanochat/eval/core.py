"""CORE: the DCLM in-context-learning benchmark that nanochat reports for base models.

Each task of the bundle's `core.yaml` is one of three types, all scored from a single forward pass:
- multiple_choice: one prompt per choice with the same context; the choice whose continuation
  tokens have the lowest mean cross-entropy is the prediction.
- schema: one prompt per context option with the same continuation; lowest mean loss wins.
- language_modeling: correct iff greedy argmax reproduces every continuation token.
Prompts start with BOS, few-shot examples come first (separated by a blank line), and rows are
cropped on the left to the model's sequence length. Per task the data is shuffled with
`random.Random(1337)` and cut to `max_per_task`; the few-shot examples of item i are drawn with
`random.Random(1234 + i)` from the other items. Accuracy is centered against the task's random
baseline, `(acc - b) / (1 - b)`, and CORE is the mean of the centered accuracies.

Bundles: the DCLM bundle downloaded by `nanochat data prepare-evals` (label "CORE"), or
CORE-offline built from the packaged data (19 of the 22 tasks, two of them subsets: its scores are
labelled as such and are not comparable with reference CORE numbers).
Over several ranks, items are strided by rank and the correctness vector is all-reduced.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from nanochat.common import paths
from nanochat.common.atomic import atomic_write_json, fresh_temp_dir, publish_dir
from nanochat.common.errors import NanochatError

CORE_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


def bundle_url() -> str:
    return os.environ.get("NANOCHAT_CORE_BUNDLE_URL", CORE_BUNDLE_URL)


def offline_label(n_tasks: int) -> str:
    return f"CORE-offline ({n_tasks} tasks, squad 1k, coqa 4.9k)"


# --- bundles --------------------------------------------------------------------------------------


@dataclass
class CoreBundle:
    """A folder in the DCLM eval_bundle layout (or the packaged `core/` resources when root is None)."""

    root: Path | None
    label: str = "CORE"
    offline: bool = False
    origin: str = ""

    def open(self, relpath: str):
        if self.root is None:
            from nanochat.data.resources import open_resource

            return open_resource(f"core/{relpath}")
        for p in (self.root / relpath, self.root / (relpath + ".gz")):
            if p.is_file():
                if p.suffix == ".gz" and not relpath.endswith(".gz"):
                    return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
                return open(p, encoding="utf-8", newline="")
        raise NanochatError(f"{self.root / relpath} is missing from the eval bundle; run `nanochat data prepare-evals` again")

    def config(self) -> dict:
        with self.open("core.yaml") as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("icl_tasks"), list):
            raise NanochatError(f"{self.origin}: core.yaml has no icl_tasks list; run `nanochat data prepare-evals` again")
        return cfg

    def task_specs(self) -> list[dict]:
        specs = []
        for t in self.config()["icl_tasks"]:
            if t.get("icl_task_type") not in TASK_TYPES:
                raise NanochatError(f"{self.origin}: task {t.get('label')} has unknown type {t.get('icl_task_type')!r}")
            shots = t.get("num_fewshot", [0])
            specs.append(
                {
                    "label": t["label"],
                    "dataset_uri": t["dataset_uri"],
                    "num_fewshot": int(shots[0] if isinstance(shots, list) else shots),
                    "task_type": t["icl_task_type"],
                    "continuation_delimiter": t.get("continuation_delimiter", " "),
                }
            )
        return specs

    def missing_tasks(self) -> list[str]:
        return [t["label"] for t in self.config().get("missing_icl_tasks", []) or []]

    def baselines(self) -> dict[str, float]:
        """Random baseline of each task, in percent (the csv's unit)."""
        with self.open("eval_meta_data.csv") as f:
            return {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}

    def load_data(self, dataset_uri: str) -> list[dict]:
        with self.open(f"eval_data/{dataset_uri}") as f:
            return [json.loads(line) for line in f if line.strip()]


def _bundle_from_dir(d: Path) -> CoreBundle:
    meta = {}
    if (d / "bundle.json").is_file():
        meta = json.loads((d / "bundle.json").read_text())
    return CoreBundle(d, meta.get("label", "CORE"), bool(meta.get("offline", False)), str(d))


def packaged_bundle() -> CoreBundle:
    b = CoreBundle(None, "", True, "packaged:core/")
    b.label = offline_label(len(b.task_specs()))
    return b


def find_bundle() -> CoreBundle:
    """The downloaded DCLM bundle if prepared, else a prepared CORE-offline, else the packaged data."""
    for name in ("eval_bundle", "eval_bundle_offline"):
        d = paths.eval_dir() / name
        if (d / "core.yaml").is_file():
            return _bundle_from_dir(d)
    return packaged_bundle()


def prepare_offline_bundle() -> Path:
    """Write CORE-offline, uncompressed, in the DCLM layout to <home>/eval/eval_bundle_offline/."""
    from nanochat.data.resources import open_resource

    src = packaged_bundle()
    final = paths.eval_dir() / "eval_bundle_offline"
    tmp = fresh_temp_dir(final)
    try:
        rels = ["core.yaml", "eval_meta_data.csv"] + sorted({f"eval_data/{s['dataset_uri']}" for s in src.task_specs()})
        for rel in rels:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_resource(f"core/{rel}", "rb") as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        specs = src.task_specs()
        atomic_write_json(tmp / "bundle.json", {"label": src.label, "offline": True, "tasks": len(specs), "missing": src.missing_tasks(), "source": "packaged data (see the data README)"})
        return publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def download_bundle(url: str | None = None) -> Path:
    """Download and unpack the DCLM CORE bundle to <home>/eval/eval_bundle/ (once)."""
    from nanochat.tasks.hub import download_file

    url = url or bundle_url()
    final = paths.eval_dir() / "eval_bundle"
    if (final / "core.yaml").is_file():
        return final
    tmp = fresh_temp_dir(final)
    try:
        zpath = tmp / "eval_bundle.zip"
        download_file(url, zpath)
        out = tmp / "unpacked"
        with zipfile.ZipFile(zpath) as z:
            for member in z.namelist():
                target = (out / member).resolve()
                if not str(target).startswith(str(out.resolve())):
                    raise NanochatError(f"{url} holds an unsafe path {member!r}; not unpacking it")
            z.extractall(out)
        found = sorted(out.rglob("core.yaml"), key=lambda p: len(p.parts))
        if not found:
            raise NanochatError(f"{url} has no core.yaml; it is not a CORE eval bundle (check NANOCHAT_CORE_BUNDLE_URL)")
        root = found[0].parent
        staged = fresh_temp_dir(final)
        shutil.rmtree(staged)
        shutil.move(str(root), staged)
        atomic_write_json(staged / "bundle.json", {"label": "CORE", "offline": False, "source": url})
        publish_dir(staged, final)
        return final
    except zipfile.BadZipFile as e:
        raise NanochatError(f"{url} is not a valid zip file; try again (or check NANOCHAT_CORE_BUNDLE_URL)") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- prompts --------------------------------------------------------------------------------------


def render_mc(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['query']}{delim}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
    return [f"{shots}{item['query']}{delim}{choice}" for choice in item["choices"]]


def render_schema(item: dict, delim: str, fewshot: list[dict]) -> list[str]:
    shots = "".join(f"{ex['context_options'][ex['gold']]}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    return [f"{shots}{ctx}{delim}{item['continuation']}" for ctx in item["context_options"]]


def render_lm(item: dict, delim: str, fewshot: list[dict]) -> tuple[str, str]:
    """(prompt without the continuation, stripped; prompt with it)."""
    shots = "".join(f"{ex['context'].strip()}{delim}{ex['continuation']}\n\n" for ex in fewshot)
    head = f"{shots}{item['context'].strip()}{delim}"
    return head.strip(), head + item["continuation"]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def _common_suffix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(1, n + 1):
        if any(s[-i] != seqs[0][-i] for s in seqs[1:]):
            return i - 1
    return n


def example_tokens(tokenizer, task_type: str, item: dict, delim: str, fewshot: list[dict]) -> tuple[list[list[int]], list[int], list[int]]:
    """Token rows (BOS first) and, per row, the [start, end) span of the tokens to score."""
    bos = tokenizer.bos_id
    if task_type == "multiple_choice":
        rows = [tokenizer.encode(p, prepend=bos) for p in render_mc(item, delim, fewshot)]
        start = _common_prefix(rows) if len(rows) > 1 else 1
        # a choice that is a prefix of another still scores its last token (never an empty span)
        return rows, [min(start, len(r) - 1) for r in rows], [len(r) for r in rows]
    if task_type == "schema":
        rows = [tokenizer.encode(p, prepend=bos) for p in render_schema(item, delim, fewshot)]
        suffix = _common_suffix(rows)
        return rows, [len(r) - suffix for r in rows], [len(r) for r in rows]
    without, with_ = render_lm(item, delim, fewshot)
    a = tokenizer.encode(without, prepend=bos)
    b = tokenizer.encode(with_, prepend=bos)
    # normally `a` is a prefix of `b`; if a tokenizer merges across the boundary, score from where they part
    start = len(a) if b[: len(a)] == a else _common_prefix([a, b])
    return [b], [start], [len(b)]


def _crop(rows, starts, ends, max_len: int | None):
    if max_len is None:
        return rows, starts, ends
    out = ([], [], [])
    for r, s, e in zip(rows, starts, ends):
        cut = max(0, len(r) - max_len)
        out[0].append(r[cut:])
        out[1].append(max(1, s - cut))
        out[2].append(e - cut)
    return out


def model_max_len(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "sequence_len", None) if cfg is not None else getattr(model, "max_seq_len", None)


def score_examples(model, tokenizer, task_type: str, examples: list[tuple[dict, list[dict]]], delim: str, device) -> list[bool]:
    """Several items (each with its few-shot examples) in one forward pass, then the task type's rule.

    The rows of all items are right-padded with BOS into one batch; causal attention means the
    padding never changes the logits of a real position."""
    import torch
    import torch.nn.functional as F

    max_len = model_max_len(model)
    prepared = [_crop(*example_tokens(tokenizer, task_type, item, delim, fewshot), max_len) for item, fewshot in examples]
    all_rows = [r for rows, _, _ in prepared for r in rows]
    width = max(len(r) for r in all_rows)
    ids = torch.full((len(all_rows), width), tokenizer.bos_id, dtype=torch.long)
    for i, r in enumerate(all_rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    ids = ids.to(device)
    with torch.no_grad():
        logits = model(ids).float()
    # loss[i, t] = CE of predicting token t+1 from the prefix up to t
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none").view(len(all_rows), width - 1)
    results = []
    base = 0
    for (item, _), (rows, starts, ends) in zip(examples, prepared):
        if task_type == "language_modeling":
            s, e = starts[0], ends[0]
            predicted = logits[base, s - 1 : e - 1].argmax(dim=-1)
            results.append(bool(torch.equal(predicted, ids[base, s:e])))
        else:
            mean_losses = [losses[base + i, s - 1 : e - 1].mean().item() for i, (s, e) in enumerate(zip(starts, ends))]
            results.append(min(range(len(rows)), key=lambda i: mean_losses[i]) == item["gold"])
        base += len(rows)
    return results


def score_example(model, tokenizer, task_type: str, item: dict, delim: str, fewshot: list[dict], device) -> bool:
    """One item: a single forward over its prompts, then the task type's rule."""
    return score_examples(model, tokenizer, task_type, [(item, fewshot)], delim, device)[0]


def fewshot_for(data: list[dict], idx: int, k: int) -> list[dict]:
    if k <= 0:
        return []
    rng = random.Random(1234 + idx)
    others = [i for i in range(len(data)) if i != idx]
    return [data[i] for i in rng.sample(others, min(k, len(others)))]


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def evaluate_task(
    model, tokenizer, data: list[dict], spec: dict, device, on_item: Callable[[], None] | None = None, batch_rows: int = 1
) -> float:
    """Accuracy on one task's (already shuffled and cut) data, over every rank.

    batch_rows > 1 puts consecutive items of this rank into one forward while their rows fit."""
    import torch

    dist, rank, world = _dist()
    correct = torch.zeros(len(data), dtype=torch.float32, device=device)
    mine = list(range(rank, len(data), world))
    kind = spec["task_type"]

    def rows_of(item: dict) -> int:
        return len(item["choices"]) if kind == "multiple_choice" else len(item["context_options"]) if kind == "schema" else 1

    i = 0
    while i < len(mine):
        group = [mine[i]]
        rows = rows_of(data[mine[i]])
        while i + len(group) < len(mine) and rows + rows_of(data[mine[i + len(group)]]) <= batch_rows:
            rows += rows_of(data[mine[i + len(group)]])
            group.append(mine[i + len(group)])
        examples = [(data[idx], fewshot_for(data, idx, spec["num_fewshot"])) for idx in group]
        for idx, ok in zip(group, score_examples(model, tokenizer, spec["task_type"], examples, spec["continuation_delimiter"], device)):
            correct[idx] = float(ok)
            if on_item is not None:
                on_item()
        i += len(group)
    if dist is not None:
        dist.all_reduce(correct, op=dist.ReduceOp.SUM)
    return correct.mean().item() if len(data) else float("nan")


def centered(accuracy: float, baseline_percent: float) -> float:
    b = 0.01 * baseline_percent
    return (accuracy - b) / (1.0 - b)


@dataclass
class CoreResult:
    label: str
    core: float
    tasks: dict[str, dict] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    origin: str = ""

    def to_json(self) -> dict:
        return {"label": self.label, "core": self.core, "tasks": self.tasks, "missing": self.missing, "origin": self.origin}


def evaluate_core(
    model,
    tokenizer,
    bundle: CoreBundle,
    device,
    max_per_task: int = -1,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
    batch_rows: int = 1,
) -> CoreResult:
    """Every task of the bundle; `progress(label, n)` may return a per-item callback (a progress bar)."""
    baselines = bundle.baselines()
    result = CoreResult(bundle.label, float("nan"), missing=bundle.missing_tasks(), origin=bundle.origin)
    loaded: dict[str, list[dict]] = {}  # hellaswag serves two tasks: read it once
    for spec in bundle.task_specs():
        if spec["label"] not in baselines:
            raise NanochatError(f"{bundle.origin}: eval_meta_data.csv has no random baseline for {spec['label']}; the bundle is damaged")
        if spec["dataset_uri"] not in loaded:
            loaded[spec["dataset_uri"]] = bundle.load_data(spec["dataset_uri"])
        data = list(loaded[spec["dataset_uri"]])
        random.Random(1337).shuffle(data)
        if max_per_task > 0:
            data = data[:max_per_task]
        tick = progress(spec["label"], len(data)) if progress is not None else None
        acc = evaluate_task(model, tokenizer, data, spec, device, tick, batch_rows)
        result.tasks[spec["label"]] = {
            "accuracy": acc,
            "centered": centered(acc, baselines[spec["label"]]),
            "baseline_percent": baselines[spec["label"]],
            "examples": len(data),
            "shots": spec["num_fewshot"],
            "type": spec["task_type"],
        }
    values = [t["centered"] for t in result.tasks.values()]
    result.core = sum(values) / len(values) if values else float("nan")
    return result
