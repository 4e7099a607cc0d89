"""`nanochat eval`: benchmarks of a checkpoint (CORE and bpb for base models, chat tasks for sft/rl)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, NNodes, NodeRank, RdzvEndpoint, RdzvId, node_options


def eval_(
    source: str = typer.Option("base", help="Which checkpoints: base, sft or rl."),
    tasks: Optional[str] = typer.Option(
        None,
        help="Comma-separated: core,bpb,arc-easy,arc-challenge,mmlu,gsm8k,humaneval,spellingbee. Default: core,bpb for base; the six chat tasks for sft/rl.",
    ),
    max_per_task: int = typer.Option(-1, callback=ranges.count(minus_one="all"), help="Examples per task (-1: all); bpb has --bpb-tokens."),
    bpb_tokens: Optional[int] = typer.Option(None, callback=ranges.count(), help="Tokens per split for bpb (default: as many as the checkpoint's training evaluated its val bpb on)."),
    json_file: Optional[str] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag (default: the newest)."),
    step: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Checkpoint step (default: the newest complete one)."),
    data: Optional[str] = typer.Option(None, help="Corpus for bpb: demo, web or an imported name (default: the one the checkpoint was trained on)."),
    batch_size: int = typer.Option(8, callback=ranges.count(), help="Prompts (or bpb rows) per forward pass."),
    num_samples: int = typer.Option(1, callback=ranges.count(), help="Samples per problem for generative tasks (pass@k)."),
    temperature: float = typer.Option(0.0, callback=ranges.number(low=0), help="Sampling temperature for generative tasks."),
    top_k: int = typer.Option(50, callback=ranges.count(low=0), help="Top-k for generative tasks (0: off)."),
    max_new_tokens: int = typer.Option(512, callback=ranges.count(), help="Longest completion for generative tasks."),
    offline: bool = typer.Option(False, "--offline", help="Use only the packaged eval data (no downloads)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    nnodes: NNodes = None,
    node_rank: NodeRank = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_id: RdzvId = None,
    harness: Optional[str] = typer.Option(None, help="Run EleutherAI lm-evaluation-harness tasks instead (comma-separated lm-eval task names; needs the interop extra or pip install lm_eval). --max-per-task is its --limit."),
    harness_include: Optional[str] = typer.Option(None, help="A folder of your own lm-eval task YAMLs (local data files work offline)."),
    num_fewshot: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Few-shot examples for --harness tasks (default: each task's own)."),
) -> None:
    """Evaluate a checkpoint: CORE and bits per byte for base models, chat tasks for sft/rl (or lm-eval tasks with --harness)."""
    if harness is not None:
        return _harness(harness, harness_include, num_fewshot, source, model_tag, step, max_per_task, batch_size, max_new_tokens, json_file, offline, device)
    import os

    from nanochat.common import checks
    from nanochat.common.checkpoint import require_checkpoint
    from nanochat.common.launch import maybe_relaunch
    from nanochat.eval.suite import EvalOptions

    # every check that needs no model, before any process is started or anything loaded
    task_names = _task_names(source, tasks)
    checks.nproc(nproc)
    nodes = node_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
    _check_device_and_data(device, data)
    require_checkpoint(source, model_tag, step)
    maybe_relaunch(nproc, device, nodes=nodes)

    opts = EvalOptions(
        tasks=task_names,
        max_per_task=max_per_task,
        batch_size=batch_size,
        num_samples=num_samples,
        temperature=temperature,
        top_k=top_k or None,
        max_new_tokens=max_new_tokens,
        data=data,
        bpb_tokens=bpb_tokens,
        data_source="packaged" if offline else "auto",
    )
    if offline:
        os.environ["NANOCHAT_OFFLINE"] = "1"
    _evaluate(source, model_tag, step, opts, device, json_file)


def _task_names(source: str, tasks: str | None) -> list[str]:
    """The tasks to run, checked against the source (a name outside the fixed task list is bad usage)."""
    from nanochat.common import checks
    from nanochat.common.errors import NanochatError, UsageError
    from nanochat.eval.suite import parse_tasks

    checks.one_of("source", source, ("base", "sft", "rl"))
    try:
        return parse_tasks(tasks, source)
    except NanochatError as e:
        raise UsageError(str(e)) from None


def _check_device_and_data(device: str, data: str | None) -> None:
    from nanochat.common.device import check_device_name

    check_device_name(device)
    if data is not None:
        from nanochat.data.corpus import check_data_name

        check_data_name(data)


def _evaluate(source: str, model_tag: str | None, step: int | None, opts, device: str, json_file: str | None) -> None:
    """Load the checkpoint on every process, run the suite, and on rank 0 print, record and (--json) write the results."""
    from nanochat.common.device import detect_device
    from nanochat.common.dist import distributed
    from nanochat.common.errors import NanochatError
    from nanochat.common.logging import is_rank0, print0

    with distributed(detect_device(device), hint="start it again on every machine") as info:
        try:
            from nanochat.engine.loading import load_model
        except ImportError as e:
            raise NanochatError("checkpoint loading is not in this build yet; `nanochat eval` needs the training stage") from e
        model, tokenizer, meta = load_model(source, model_tag, step, device=info.device)
        model.eval()
        from nanochat.eval.suite import report_data, results_json

        rows = _run_with_progress(model, tokenizer, meta, opts, info)
        if not is_rank0():
            return
        _print_results(rows, source)
        checkpoint = {"step": meta.get("step"), "model_config": meta.get("model_config")}
        if json_file:
            from pathlib import Path

            from nanochat.common.atomic import atomic_write_json

            atomic_write_json(Path(json_file), _finite(results_json(rows, source, checkpoint)))
            print0(f"results written to {json_file}")
        from nanochat.eval.report import record_environment, record_section, sections_dir

        record_section(f"eval-{source}", report_data(rows, meta.get("step")))
        if not (sections_dir() / "environment.json").is_file():
            record_environment()


def _print_results(rows, source: str) -> None:
    """The results table, CORE's per-task table, and the notes on prompts too long and CORE tasks missing."""
    import math

    from rich.table import Table

    from nanochat.common.logging import console, print0

    t = Table(title=f"nanochat eval --source {source}", title_justify="left")
    for name, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("on", "right"), ("time", "right"), ("data", "left")):
        t.add_column(name, justify=justify, overflow="fold")
    for r in rows:
        value = "-" if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)) else f"{r.value:.4f}"
        t.add_row(r.task, r.metric, value, r.on, f"{r.seconds:.1f}s", r.source)
    console().print(t)
    for r in rows:
        if r.task == "core":
            ct = Table(title=r.metric, title_justify="left")
            for name in ("task", "type", "shots", "examples", "accuracy", "centered"):
                ct.add_column(name, justify="left" if name in ("task", "type") else "right")
            for label, v in r.details["tasks"].items():
                ct.add_row(label, v["type"], str(v["shots"]), str(v["examples"]), f"{v['accuracy']:.4f}", f"{v['centered']:.4f}")
            console().print(ct)
    for r in rows:
        if r.details.get("too_long"):
            print0(f"[yellow]{r.task}: {r.details['too_long']} of {r.examples} prompts leave no room to answer in the model's context; counted as failed[/yellow]")
        if r.task == "core" and r.details.get("missing"):
            print0(f"[dim]{r.metric}: not comparable with reference CORE; missing tasks: {', '.join(r.details['missing'])}[/dim]")


def _harness(tasks, include, num_fewshot, source, model_tag, step, max_per_task, batch_size, max_new_tokens, json_file, offline, device) -> None:
    """`--harness`: lm-eval's tasks over the checkpoint, in this one process; a table, and --json."""
    from nanochat.common import checks
    from nanochat.common.checkpoint import require_checkpoint
    from nanochat.common.device import check_device_name
    from nanochat.common.errors import UsageError

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UsageError("--harness needs lm-eval task names, e.g. --harness hellaswag,arc_easy")
    checks.one_of("source", source, ("base", "sft", "rl"))
    check_device_name(device)
    require_checkpoint(source, model_tag, step)
    from nanochat.common.device import detect_device
    from nanochat.common.logging import console, print0
    from nanochat.engine.loading import load_model
    from nanochat.eval.harness import require_lm_eval, nanochat_lm, run_harness, summary_rows

    require_lm_eval()  # before loading a model for nothing
    model, tokenizer, meta = load_model(source, model_tag, step, device=detect_device(device))
    model.eval()
    lm = nanochat_lm(model, tokenizer, batch_size=batch_size, max_gen_toks=max_new_tokens)
    limit = None if max_per_task < 0 else max_per_task
    results = run_harness(lm, names, include=include, limit=limit, num_fewshot=num_fewshot, log_samples=bool(json_file), offline=offline)
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"lm-evaluation-harness, {source} step {meta.get('step')}", title_justify="left")
    for name, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("examples", "right")):
        t.add_column(name, justify=justify, overflow="fold")
    for task, metric, value, n in summary_rows(results):
        t.add_row(escape(task), escape(metric), f"{value:.4f}", str(n))
    console().print(t)
    if json_file:
        from pathlib import Path

        from nanochat.common.atomic import atomic_write_json

        keep = {k: results.get(k) for k in ("results", "n-shot", "n-samples", "versions", "higher_is_better", "samples")}
        keep["checkpoint"] = {"source": source, "step": meta.get("step"), "model_config": meta.get("model_config")}
        atomic_write_json(Path(json_file), _finite(_plain(keep)))
        print0(f"results written to {json_file}")


def _plain(obj):
    """lm-eval's results as plain JSON values (tuples as lists, anything else as its text)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _finite(obj):
    """NaN/inf are not JSON: write them as null."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _run_with_progress(model, tokenizer, meta, opts, info):
    """run_suite with one rich progress bar per task (rank 0, on a terminal or not)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nanochat.common.logging import console, is_rank0
    from nanochat.eval.suite import run_suite

    world = info.world_size
    if not is_rank0():
        return run_suite(model, tokenizer, meta, opts, info.device, info.rank, world, None)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console(), transient=False) as bar:

        def progress(name: str, total: int):
            mine = -(-total // world)  # this rank's share
            tid = bar.add_task(name, total=mine)
            return lambda: bar.advance(tid)

        return run_suite(model, tokenizer, meta, opts, info.device, info.rank, world, progress)
