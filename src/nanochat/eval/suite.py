"""`nanochat eval` as a library call: run a list of evals on one model and collect the results.

Task names: `core` (CORE, on the best bundle available), `bpb` (bits per byte on the train and
validation splits of the model's corpus), and the chat tasks of `nanochat.tasks.registry` (`arc-easy`,
`arc-challenge`, `mmlu`, `gsm8k`, `humaneval`, `spellingbee`). ChatCORE is added whenever one of its tasks
ran, labelled `ChatCORE (partial: k of 6 tasks)` unless all of them did. Each result says what it was measured on
(`8,192 tokens`, `200 questions`) and where its data came from. Progress goes through
`progress(name, total) -> tick`, so the command can show one bar per task and tests can run
without a terminal.

bpb is `nanochat.eval.bpb.TextBpb`, the computation pretraining uses for its val bpb, on the token
count and row length the checkpoint's training evaluated (recorded in its meta) unless
`bpb_tokens` says otherwise: for the checkpoint pretraining ends with, the two agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nanochat.common.errors import NanochatError
from nanochat.tasks import registry

BASE_TASKS = ("core", "bpb")
DEFAULT_BPB_TOKENS = 10 * 524288  # for checkpoints that do not record their val bpb token count


def all_tasks() -> tuple[str, ...]:
    return BASE_TASKS + registry.task_names()


def default_tasks(source: str) -> tuple[str, ...]:
    """core and bpb for a base model; every registered chat task for sft and rl checkpoints."""
    return BASE_TASKS if source == "base" else registry.task_names()


@dataclass
class EvalOptions:
    tasks: tuple[str, ...]
    max_per_task: int = -1
    batch_size: int = 8
    num_samples: int = 1
    temperature: float = 0.0
    top_k: int | None = 50
    max_new_tokens: int = 512
    data: str | None = None  # the corpus for bpb
    bpb_tokens: int | None = None  # None: as many as the checkpoint's training evaluated its val bpb on
    data_source: str = "auto"  # auto | hub | packaged, for the chat tasks


@dataclass
class EvalRow:
    task: str
    metric: str
    value: float | None
    examples: int
    source: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    unit: str = "examples"  # what `examples` counts: tokens, questions, problems, tasks

    @property
    def on(self) -> str:
        """What the value was measured on: `8,192 tokens`, `20 questions`."""
        return f"{self.examples:,} {self.unit}"


def parse_tasks(spec: str | None, source: str) -> tuple[str, ...]:
    if not spec:
        return default_tasks(source)
    names = tuple(t.strip().lower() for t in spec.split(",") if t.strip())
    bad = [t for t in names if t not in all_tasks()]
    if bad or not names:
        raise NanochatError(f"unknown eval task(s) {', '.join(bad) or '(none)'}; choose from {','.join(all_tasks())}")
    return tuple(dict.fromkeys(names))


def corpus_name(meta: dict, override: str | None) -> str:
    """The corpus a checkpoint was trained on, as recorded in its meta (or --data)."""
    if override:
        return override
    stack = [meta]
    while stack:
        d = stack.pop()
        if isinstance(d.get("data"), str):
            return d["data"]
        stack.extend(v for v in d.values() if isinstance(v, dict))
    raise NanochatError("the checkpoint does not record its training data; pass --data demo|web|NAME for the bpb eval")


def run_bpb(model, tokenizer, meta: dict, opts: EvalOptions, device, rank: int, world: int, progress) -> EvalRow:
    """bpb on the train and val splits: the same rows pretraining's val bpb uses (see TextBpb)."""
    import torch

    from nanochat.data.corpus import open_corpus
    from nanochat.eval.bpb import TextBpb, bpb_stats, corpus_docs
    from nanochat.eval.core import model_max_len

    name = corpus_name(meta, opts.data)
    seq_len = meta.get("max_seq_len") or model_max_len(model) or 1024
    tokens = opts.bpb_tokens or meta.get("val_bpb_tokens") or DEFAULT_BPB_TOKENS
    if opts.bpb_tokens is not None and tokens < seq_len:
        raise NanochatError(f"--bpb-tokens {tokens} is less than one row of {seq_len} tokens; use at least {seq_len}")
    t0 = time.time()
    sets = {split: TextBpb(tokenizer, corpus_docs(open_corpus(name, split)), tokens, seq_len, rank, world) for split in ("train", "val")}
    tick = progress("bpb", sum(s.steps(opts.batch_size) for s in sets.values()) * world) if progress else None
    token_bytes = torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device)
    out = {}
    for split, text in sets.items():

        def counted(it):
            for b in it:
                yield b
                if tick:
                    tick()

        out[split] = bpb_stats(model, counted(text.batches(opts.batch_size, device)), None, token_bytes)
    details = {"train_bpb": out["train"].bpb, "val_bpb": out["val"].bpb, "train_tokens": out["train"].tokens, "val_tokens": out["val"].tokens, "seq_len": seq_len}
    return EvalRow("bpb", "val bpb", out["val"].bpb, out["val"].tokens, f"corpus:{name} (val split)", time.time() - t0, details, unit="tokens")


def run_core(model, tokenizer, opts: EvalOptions, device, progress) -> EvalRow:
    from nanochat.eval.core import evaluate_core, find_bundle

    bundle = find_bundle()
    t0 = time.time()
    res = evaluate_core(model, tokenizer, bundle, device, opts.max_per_task, progress, batch_rows=opts.batch_size)
    n = sum(t["examples"] for t in res.tasks.values())
    details = {"label": res.label, "tasks": res.tasks, "missing": res.missing}
    return EvalRow("core", res.label, res.core, n, res.origin, time.time() - t0, details, unit="examples")


def run_chat_task(name: str, model, tokenizer, opts: EvalOptions, device, progress, generate=None) -> EvalRow:
    from nanochat.eval import chat_eval

    task = registry.build(name, source=opts.data_source)
    n = len(task) if opts.max_per_task < 0 else min(len(task), opts.max_per_task)
    t0 = time.time()
    tick = progress(name, n) if progress else None
    if task.eval_type == "categorical":
        res = chat_eval.run_categorical(model, tokenizer, task, device, opts.batch_size, n, tick)
    else:
        if registry.spec(name).needs_sandbox:
            from nanochat.tasks.humaneval import sandbox_runner

            sandbox_runner()  # fail before generating anything if the sandbox is missing
        if generate is None:
            generate = chat_eval.engine_generate(model, tokenizer, opts.max_new_tokens, opts.temperature, opts.top_k)
        from nanochat.eval.core import model_max_len

        res = chat_eval.run_generative(generate, tokenizer, task, device, opts.num_samples, n, tick, opts.batch_size, model_max_len(model))
    metric = "accuracy" if task.eval_type == "categorical" else f"pass@{opts.num_samples}"
    details = {"passed": res.passed}
    if res.too_long:
        details["too_long"] = res.too_long
    return EvalRow(name, metric, res.accuracy, res.total, task.data_source, time.time() - t0, details, unit=registry.spec(name).unit)


def preflight(opts: EvalOptions, meta: dict) -> None:
    """Fail before any eval runs if one of them cannot: missing sandbox, corpus or task data."""
    chat = [t for t in opts.tasks if t not in BASE_TASKS]
    for name in chat:
        if registry.spec(name).needs_sandbox:
            from nanochat.tasks.humaneval import sandbox_runner

            probe = sandbox_runner()("print(1)")  # raises with the fix (e.g. install bubblewrap) if it cannot run
            if not probe.success:
                raise NanochatError(f"the code sandbox cannot run Python here ({probe.error}); leave {name} out of --tasks")
            break
    if "bpb" in opts.tasks:
        from nanochat.data.corpus import open_corpus

        open_corpus(corpus_name(meta, opts.data), "val")
    for name in chat:
        registry.build(name, source=opts.data_source)  # the data loads (or says why not)


def run_suite(model, tokenizer, meta: dict, opts: EvalOptions, device, rank: int = 0, world: int = 1, progress=None, generate=None) -> list[EvalRow]:
    """Every requested eval, in order; then ChatCORE over the chat tasks that ran (partial unless all six did)."""
    preflight(opts, meta)
    rows: list[EvalRow] = []
    for name in opts.tasks:
        if name == "core":
            rows.append(run_core(model, tokenizer, opts, device, progress))
        elif name == "bpb":
            rows.append(run_bpb(model, tokenizer, meta, opts, device, rank, world, progress))
        else:
            rows.append(run_chat_task(name, model, tokenizer, opts, device, progress, generate))
    cc = chatcore_row(rows)
    if cc is not None:
        rows.append(cc)
    return rows


def chatcore_row(rows: list[EvalRow]) -> EvalRow | None:
    """ChatCORE over the chat tasks among `rows` that have a value: `ChatCORE` when all six are there,
    `ChatCORE (partial: k of 6 tasks)` otherwise; None when none of them ran."""
    import math

    from nanochat.eval.chat_eval import chatcore_partial

    members = registry.chatcore_names()
    accs = {r.task: r.value for r in rows if r.task in members and r.value is not None and math.isfinite(r.value)}
    if not accs:
        return None
    ran = [t for t in members if t in accs]
    missing = [t for t in members if t not in accs]
    label = "ChatCORE" if not missing else f"ChatCORE (partial: {len(ran)} of {len(members)} tasks)"
    source = ", ".join(ran) + (f"; missing {', '.join(missing)}" if missing else "")
    return EvalRow("chatcore", label, chatcore_partial(accs), len(ran), source, 0.0, {"tasks": ran, "missing": missing}, unit="tasks")


def report_data(rows: list[EvalRow], step: int | None = None) -> dict:
    """The report section of an eval: every result as a `metric()` (keys as eval/report.py documents)."""
    from nanochat.eval.report import metric

    results: dict[str, dict] = {}
    data: dict[str, Any] = {"step": step}
    for r in rows:
        if r.task == "core":
            results["core"] = metric(r.metric, r.value, r.examples, r.unit, step=step, source=r.source)
            data["core_tasks"] = {k: {"accuracy": v["accuracy"], "centered": v["centered"], "examples": v["examples"]} for k, v in r.details["tasks"].items()}
        elif r.task == "bpb":
            results["val_bpb"] = metric("val bpb", r.details["val_bpb"], r.details["val_tokens"], "tokens", step=step, source=r.source)
            results["train_bpb"] = metric("train bpb", r.details["train_bpb"], r.details["train_tokens"], "tokens", step=step,
                                          source=r.source.replace("(val split)", "(train split)"), summary=False)  # fmt: skip
        elif r.task == "chatcore":
            # the label says how many tasks it covers; `r.examples` counts tasks, not questions
            results["chatcore"] = metric(r.metric, r.value, step=step, source=r.source)
        else:
            task = registry.spec(r.task)
            chance = task.chance if r.metric == "accuracy" else None  # letter choice: 1 in 4 by guessing
            results[r.task] = metric(task.title, r.value, r.examples, r.unit, kind=r.metric, step=step, source=r.source, chance=chance)
    data["results"] = results
    data["total_time_s"] = sum(r.seconds for r in rows)
    return data


def results_json(rows: list[EvalRow], source: str, checkpoint: dict) -> dict:
    return {
        "source": source,
        "checkpoint": checkpoint,
        "results": {r.task: {"metric": r.metric, "value": r.value, "count": r.examples, "unit": r.unit, "data_source": r.source, "seconds": round(r.seconds, 3), **r.details} for r in rows},
    }
