"""`nanochat eval` as a library call: run a list of evals on one model and collect the results.

Task names: `core` (CORE, on the best bundle available), `bpb` (bits per byte on the train and
validation splits of the model's corpus), and the chat tasks `arc-easy`, `arc-challenge`, `mmlu`,
`gsm8k`, `humaneval`, `spellingbee` (ChatCORE is added when all six ran). Each result says where
its data came from. Progress goes through `progress(name, total) -> tick`, so the command can show
one bar per task and tests can run without a terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nanochat.common.errors import NanochatError
from nanochat.tasks import EVAL_TASK_NAMES

ALL_TASKS = ("core", "bpb") + EVAL_TASK_NAMES
DEFAULT_TASKS = {"base": ("core", "bpb"), "sft": EVAL_TASK_NAMES, "rl": EVAL_TASK_NAMES}
DEFAULT_BPB_TOKENS = 10 * 524288


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
    bpb_tokens: int = DEFAULT_BPB_TOKENS
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


def parse_tasks(spec: str | None, source: str) -> tuple[str, ...]:
    if not spec:
        return DEFAULT_TASKS[source]
    names = tuple(t.strip().lower() for t in spec.split(",") if t.strip())
    bad = [t for t in names if t not in ALL_TASKS]
    if bad or not names:
        raise NanochatError(f"unknown eval task(s) {', '.join(bad) or '(none)'}; choose from {','.join(ALL_TASKS)}")
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
    from nanochat.data.corpus import open_corpus
    from nanochat.eval.bpb import evaluate_bpb, token_stream_batches
    from nanochat.eval.core import model_max_len

    name = corpus_name(meta, opts.data)
    seq_len = model_max_len(model) or 1024
    rows_per_split = opts.max_per_task if opts.max_per_task > 0 else max(1, opts.bpb_tokens // seq_len)
    steps = max(1, -(-rows_per_split // (opts.batch_size * world)))
    t0 = time.time()
    out: dict[str, float] = {}
    tick = progress("bpb", 2 * steps * world) if progress else None
    for split in ("train", "val"):
        corpus = open_corpus(name, split)
        docs = (text for text, _ in corpus.iter_docs(rank=rank, world_size=world))
        batches = token_stream_batches(tokenizer, docs, opts.batch_size, seq_len, device)

        def counted(it):
            for b in it:
                yield b
                if tick:
                    tick()

        out[split] = evaluate_bpb(model, counted(batches), steps, tokenizer.token_bytes())
    tokens = steps * opts.batch_size * world * seq_len
    return EvalRow("bpb", "val bpb", out["val"], tokens, f"corpus:{name}", time.time() - t0, {"train_bpb": out["train"], "val_bpb": out["val"], "tokens_per_split": tokens})


def run_core(model, tokenizer, opts: EvalOptions, device, progress) -> EvalRow:
    from nanochat.eval.core import evaluate_core, find_bundle

    bundle = find_bundle()
    t0 = time.time()
    res = evaluate_core(model, tokenizer, bundle, device, opts.max_per_task, progress, batch_rows=opts.batch_size)
    n = sum(t["examples"] for t in res.tasks.values())
    details = {"label": res.label, "tasks": res.tasks, "missing": res.missing}
    return EvalRow("core", res.label, res.core, n, res.origin, time.time() - t0, details)


def run_chat_task(name: str, model, tokenizer, opts: EvalOptions, device, progress, generate=None) -> EvalRow:
    from nanochat.eval import chat_eval
    from nanochat.tasks import get_eval_task

    task = get_eval_task(name, source=opts.data_source)
    n = len(task) if opts.max_per_task < 0 else min(len(task), opts.max_per_task)
    t0 = time.time()
    tick = progress(name, n) if progress else None
    if task.eval_type == "categorical":
        res = chat_eval.run_categorical(model, tokenizer, task, device, opts.batch_size, n, tick)
    else:
        if name == "humaneval":
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
    return EvalRow(name, metric, res.accuracy, res.total, task.data_source, time.time() - t0, details)


def preflight(opts: EvalOptions, meta: dict) -> None:
    """Fail before any eval runs if one of them cannot: missing engine, sandbox or corpus."""
    from nanochat.eval import chat_eval
    from nanochat.tasks import get_eval_task

    generative = [t for t in opts.tasks if t in ("gsm8k", "humaneval", "spellingbee")]
    if generative:
        try:
            import nanochat.engine.engine  # noqa: F401
        except ImportError as e:
            raise NanochatError(f"{', '.join(generative)} need the inference engine (nanochat.engine.engine), which is not in this build; leave them out of --tasks") from e
    if "humaneval" in opts.tasks:
        from nanochat.tasks.humaneval import sandbox_runner

        probe = sandbox_runner()("print(1)")  # raises with the fix (e.g. install bubblewrap) if it cannot run
        if not probe.success:
            raise NanochatError(f"the code sandbox cannot run Python here ({probe.error}); leave humaneval out of --tasks")
    if "bpb" in opts.tasks:
        from nanochat.data.corpus import open_corpus

        open_corpus(corpus_name(meta, opts.data), "val")
    for name in opts.tasks:
        if name in chat_eval.BASELINES:
            get_eval_task(name, source=opts.data_source)  # the data loads (or says why not)


def run_suite(model, tokenizer, meta: dict, opts: EvalOptions, device, rank: int = 0, world: int = 1, progress=None, generate=None) -> list[EvalRow]:
    """Every requested eval, in order; then ChatCORE when the six chat tasks all ran."""
    from nanochat.eval.chat_eval import chatcore

    preflight(opts, meta)
    rows: list[EvalRow] = []
    for name in opts.tasks:
        if name == "core":
            rows.append(run_core(model, tokenizer, opts, device, progress))
        elif name == "bpb":
            rows.append(run_bpb(model, tokenizer, meta, opts, device, rank, world, progress))
        else:
            rows.append(run_chat_task(name, model, tokenizer, opts, device, progress, generate))
    cc = chatcore({r.task: r.value for r in rows if r.task in EVAL_TASK_NAMES and r.value is not None})
    if cc is not None:
        rows.append(EvalRow("chatcore", "ChatCORE", cc, sum(r.examples for r in rows if r.task in EVAL_TASK_NAMES), "the six chat tasks above", 0.0))
    return rows


def report_data(rows: list[EvalRow]) -> dict:
    """The report section of an eval (keys as eval/report.py documents)."""
    data: dict[str, Any] = {}
    for r in rows:
        if r.task == "core":
            data["core"] = r.value
            data["core_label"] = r.details["label"]
            data["core_tasks"] = {k: v["centered"] for k, v in r.details["tasks"].items()}
        elif r.task == "bpb":
            data["val_bpb"] = r.details["val_bpb"]
            data["train_bpb"] = r.details["train_bpb"]
        else:
            data[r.task] = r.value
        data[f"{r.task}_source"] = r.source
    data["total_time_s"] = sum(r.seconds for r in rows)
    return data


def results_json(rows: list[EvalRow], source: str, checkpoint: dict) -> dict:
    return {
        "source": source,
        "checkpoint": checkpoint,
        "results": {r.task: {"metric": r.metric, "value": r.value, "examples": r.examples, "data_source": r.source, "seconds": round(r.seconds, 3), **r.details} for r in rows},
    }
