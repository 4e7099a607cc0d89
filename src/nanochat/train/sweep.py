"""Scaling studies: `nanochat sweep miniseries` and `nanochat sweep isoflop` as one resumable run.

A sweep is a list of pretraining runs, each the very `nanochat pretrain` command a user would type
(run as `python -m nanochat pretrain ...`, so it relaunches itself under torchrun on several GPUs and
returns its memory when it ends), followed by an evaluation of its final checkpoint here:

- miniseries: one run per depth, trained for `ratio` tokens per scaling parameter
  (`--target-param-data-ratio`);
- isoflop: one run per (budget, depth), trained for the budget's FLOPs (`--target-flops`).

Every other pretrain option passes through unchanged to every run. Before anything is trained the
plan is printed: each run's parameters, FLOPs, tokens and an estimated time on this machine from a
few measured training steps (uncompiled, on one device).

Everything lives in `<NANOCHAT_HOME>/sweeps/<name>/`:

    sweep.json        what the sweep was made with; a rerun with other model or data options is refused
    val_tokens.npy    the validation rows every run is scored on, packed once (int32, rows × (T+1))
    runs/<tag>.json   one finished run: its plan, training time, val bpb and CORE
    sweep.csv         every finished run (rewritten atomically after each run)
    scaling.png       val bpb (and CORE) against FLOPs and parameters
    isoflop.png       (isoflop) the parabolas per budget, their optima and the fitted power laws
    fit.json          (isoflop) the optima and the exponents with their bootstrap uncertainty

Checkpoints go where pretrain puts them, `checkpoints/base/<name>-d<depth>[-c<budget>]/`.

Resuming: a run with a result file is skipped; a run whose final checkpoint exists is only evaluated;
any other run is started with `--resume auto`, so an interrupted one continues from its newest
checkpoint. SIGINT/SIGTERM stops the sweep: the running pretrain saves a checkpoint (a SIGTERM is
passed on to it; Ctrl-C reaches it from the terminal) and the same command continues later.
Each run's `pretrain` would record itself as the report card's "Base model training" section; the
sweep puts back whatever that section held before, and records its own section, `sweep-<name>`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

from nanochat.common import checkpoint as ck
from nanochat.common import paths
from nanochat.common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import console, print0, warn0
from nanochat.train.loop import StopSignal, format_duration
from nanochat.train.pretrain import PretrainConfig, model_config, model_facts, scaling_options
from nanochat.train.scaling import plan_training

KINDS = ("miniseries", "isoflop")
SWEEP_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # also a report section name
# pretrain options the sweep sets for each run itself (the flag to use instead)
OWNED = {
    "depth": "--depths", "model_tag": "--name (runs are tagged <name>-d<depth>)", "num_iterations": "--ratio or --budgets",
    "target_flops": "--budgets (isoflop)", "target_param_data_ratio": "--ratio (miniseries)", "resume": "nothing: runs always resume (auto)",
    "dry_run": "the sweep's own --dry-run",
}  # fmt: skip
# options that change how a run is executed, not what it computes: a rerun may change them
OPERATIONAL = {"device", "run", "tokenizer_threads", "save_every", "keep_last", "compile", "max_bad_steps", "restore_loader", "restore_rng", "dry_run_world_size"}
# in-training evals the sweep turns off unless asked for: it evaluates every final checkpoint itself
QUIET = (("eval_every", "--eval-every"), ("sample_every", "--sample-every"), ("core_metric_every", "--core-metric-every"))
CSV_COLUMNS = ("sweep", "kind", "tag", "budget", "depth", "params", "scaling_params", "flops_per_token", "iterations", "total_batch_size",
               "tokens", "tokens_per_param", "flops", "val_bpb", "core", "core_label", "train_time_s", "eval_time_s")  # fmt: skip


@dataclass
class SweepSpec:
    """What `nanochat sweep miniseries|isoflop` was asked for."""

    kind: str
    depths: tuple[int, ...]
    budgets: tuple[float, ...] = ()  # isoflop
    ratio: float = 12.0  # miniseries: tokens per scaling parameter
    name: str | None = None  # default: the kind
    data: str = "web"
    device: str = "auto"
    nproc: int | None = None
    pretrain_args: tuple[str, ...] = ()  # extra pretrain flags, verbatim, for every run
    options: dict = field(default_factory=dict)  # every PretrainConfig field as those flags set it (defaults included)
    explicit: frozenset[str] = frozenset()  # the PretrainConfig fields the flags set explicitly
    max_per_task: int = 500  # CORE examples per task; 0 skips CORE, -1 all
    bpb_tokens: int = 10 * 524288
    bootstrap: int = 1000
    measure_steps: int = 2
    dry_run: bool = False

    @property
    def sweep_name(self) -> str:
        return self.name or self.kind

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown sweep {self.kind!r}; use miniseries or isoflop")
        if not NAME_RE.match(self.sweep_name):
            raise UsageError(f"--name {self.sweep_name!r} must be lower-case letters, digits, '-' or '_' (it names a folder and a report section)")
        if not self.depths or any(d < 1 for d in self.depths):
            raise UsageError(f"--depths {','.join(map(str, self.depths)) or '(none)'} must list depths of at least 1, e.g. --depths 4,6,8")
        if self.kind == "isoflop" and (not self.budgets or any(not (c > 0 and math.isfinite(c)) for c in self.budgets)):
            raise UsageError("--budgets must list positive FLOP counts, e.g. --budgets 1e18,3e18")
        if self.kind == "miniseries" and not self.ratio > 0:
            raise UsageError(f"--ratio {self.ratio} must be positive (training tokens per scaling parameter)")
        if self.max_per_task < -1:
            raise UsageError(f"--max-per-task {self.max_per_task} must be -1 (all), 0 (no CORE) or a positive count")
        if self.bpb_tokens < 1:
            raise UsageError(f"--bpb-tokens {self.bpb_tokens} must be positive")
        if self.bootstrap < 0 or self.measure_steps < 0:
            raise UsageError("--bootstrap and --measure-steps must be 0 or more")
        for key in sorted(self.explicit & OWNED.keys()):
            raise UsageError(f"--{key.replace('_', '-')} is set by the sweep for each run; use {OWNED[key]}")


def parse_list(text: str, what: str, conv: Callable) -> tuple:
    """'4,6,8' → (4, 6, 8), duplicates dropped, order kept; a bad item is a usage error naming the flag."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            if conv is int and not item.isdigit():
                raise ValueError(item)
            v = conv(item)
        except ValueError:
            raise UsageError(f"--{what} {text!r}: {item!r} is not a number; give a comma-separated list such as " + ("4,6,8" if conv is int else "1e18,3e18")) from None
        if v not in out:
            out.append(v)
    return tuple(out)


def budget_label(c: float) -> str:
    """1e18 → '1e18', 3.5e17 → '3.5e17' (for model tags and tables)."""
    return f"{c:.3g}".replace("e+", "e").replace("e0", "e")


# ------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Run:
    tag: str
    depth: int
    budget: float | None
    args: tuple[str, ...]  # after `nanochat`
    config: PretrainConfig
    params: int = 0
    scaling_params: int = 0
    flops_per_token: float = 0.0
    iterations: int = 0
    total_batch_size: int = 0
    grad_accum: int = 1
    tokens: int = 0
    flops: float = 0.0
    est_s: float | None = None
    status: str = "to run"  # to run | resume from step k | trained | done
    result: dict | None = None

    @property
    def command(self) -> str:
        import shlex

        return "nanochat " + shlex.join(self.args)


def sweep_dir(name: str) -> Path:
    return paths.home() / "sweeps" / name


def _world(spec: SweepSpec) -> int:
    """The processes each pretrain run will start (the rule of common.launch)."""
    if spec.nproc:
        return spec.nproc
    from nanochat.common.launch import visible_gpu_count

    gpus = visible_gpu_count() if spec.device in ("auto", "cuda") else 0
    return gpus if gpus > 1 else 1


def plan_runs(spec: SweepSpec, vocab_size: int, device_type: str) -> list[Run]:
    """Every run of the sweep with its command line and derived sizes (on the meta device: nothing allocated)."""
    import torch

    from nanochat.model.gpt import GPT

    known = {f.name for f in fields(PretrainConfig)}
    base = {k: v for k, v in spec.options.items() if k in known and k not in OWNED}
    quiet: list[str] = []
    for key, flag in QUIET:
        if key not in spec.explicit:
            base[key] = -1
            quiet += [flag, "-1"]
    procs = ("--nproc", str(spec.nproc)) if spec.nproc else ()
    world = _world(spec)
    # repr: the exact float, so the run plans the very steps planned here
    horizons = [(None, ("--target-param-data-ratio", repr(spec.ratio)))] if spec.kind == "miniseries" else [(c, ("--target-flops", repr(c))) for c in spec.budgets]
    runs = []
    for budget, horizon in horizons:
        for depth in spec.depths:
            tag = f"{spec.sweep_name}-d{depth}" + (f"-c{budget_label(budget)}" if budget is not None else "")
            cfg = PretrainConfig(**{**base, "data": spec.data, "device": spec.device, "depth": depth, "model_tag": tag, "resume": "auto",
                                    "target_flops": budget if budget is not None else -1.0,
                                    "target_param_data_ratio": spec.ratio if budget is None else PretrainConfig.target_param_data_ratio})  # fmt: skip
            args = ("pretrain", *spec.pretrain_args, "--data", spec.data, "--device", spec.device, *procs, "--depth", str(depth),
                    "--model-tag", tag, *horizon, "--resume", "auto", *quiet)  # fmt: skip
            try:
                cfg.validate()
                with torch.device("meta"):
                    model = GPT(model_config(cfg, vocab_size))
                facts = model_facts(cfg, model, vocab_size)
                plan = plan_training(scaling_options(cfg, world), facts, power_law_batch=device_type == "cuda")
            except NanochatError as e:
                raise type(e)(f"run {tag}: {e}") from None
            runs.append(Run(tag, depth, budget, args, cfg, params=facts.total_params, scaling_params=facts.scaling_params,
                            flops_per_token=facts.flops_per_token, iterations=plan.num_iterations, total_batch_size=plan.total_batch_size,
                            grad_accum=plan.grad_accum_steps, tokens=plan.total_tokens, flops=plan.total_flops))  # fmt: skip
    return runs


def measure_step(cfg: PretrainConfig, vocab_size: int, device: str, steps: int) -> tuple[float, float]:
    """(seconds per micro-batch forward+backward, seconds per optimizer step), the median of `steps`
    timed repetitions after one untimed warm-up, on random tokens."""
    import torch

    from nanochat.model.gpt import build_model
    from nanochat.optim import build_optimizer
    from nanochat.train.pretrain_config import optimizer_settings

    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model = build_model(model_config(cfg, vocab_size), device, init=True, seed=0)
    opt = build_optimizer(model, **optimizer_settings(cfg))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(vocab_size, (cfg.device_batch_size, cfg.max_seq_len), generator=gen).to(dev)
    y = torch.randint(vocab_size, (cfg.device_batch_size, cfg.max_seq_len), generator=gen).to(dev)
    fb, st = [], []
    try:
        for i in range(steps + 1):
            sync()
            t0 = time.perf_counter()
            model(x, y).backward()
            sync()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            t2 = time.perf_counter()
            if i:
                fb.append(t1 - t0)
                st.append(t2 - t1)
    finally:
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    fb.sort()
    st.sort()
    return fb[len(fb) // 2], st[len(st) // 2]


def estimate_times(runs: list[Run], vocab_size: int, device: str, steps: int) -> None:
    """Fill each unfinished run's `est_s`: remaining steps × (accumulation × micro-step + optimizer step)."""
    todo = [r for r in runs if r.status not in ("done", "trained")]
    if steps < 1 or not todo:
        return
    measured: dict[int, tuple[float, float]] = {}
    for r in todo:
        if r.depth not in measured:
            try:
                measured[r.depth] = measure_step(r.config, vocab_size, device, steps)
            except RuntimeError as e:  # e.g. out of memory at this depth and device batch
                warn0(f"could not time a step at depth {r.depth} ({str(e).splitlines()[0][:120]}); no estimate for it")
                measured[r.depth] = (math.nan, math.nan)
        fb, st = measured[r.depth]
        start = int(r.status.rsplit(" ", 1)[-1]) if r.status.startswith("resume") else 0
        est = (r.iterations - start) * (r.grad_accum * fb + st)
        r.est_s = est if math.isfinite(est) else None


def _result_path(name: str, tag: str) -> Path:
    return sweep_dir(name) / "runs" / f"{tag}.json"


def read_results(name: str) -> list[dict]:
    """Every finished run of the sweep folder (also those of earlier invocations with other --depths or --budgets)."""
    out = []
    for p in sorted((sweep_dir(name) / "runs").glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            raise NanochatError(f"the sweep result {p} is damaged ({e}); delete it and rerun the sweep (that run is then evaluated again)") from None
    return sorted(out, key=lambda r: (r.get("budget") or 0.0, r["scaling_params"]))


def run_status(spec: SweepSpec, runs: list[Run]) -> None:
    """done (a result), trained (final checkpoint, not evaluated), resume from step k, or to run."""
    for r in runs:
        p = _result_path(spec.sweep_name, r.tag)
        if p.is_file():
            try:
                res = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise NanochatError(f"the sweep result {p} is damaged ({e}); delete it and rerun the sweep (that run is then evaluated again)") from None
            if (res.get("iterations"), res.get("tokens")) != (r.iterations, r.tokens):
                raise NanochatError(
                    f"run {r.tag} was trained for {res.get('iterations')} steps ({res.get('tokens')} tokens) but this plan has "
                    f"{r.iterations} ({r.tokens}); rerun with the options it was made with (e.g. the same --nproc), or pass another --name"
                )
            r.status, r.result = "done", res
            continue
        info = ck.find_latest("base", r.tag)
        if info is None:
            r.status = "to run"
        elif info.step >= r.iterations:
            r.status = "trained"
        else:
            r.status = f"resume from step {info.step}"


def text_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell (the first two left-aligned, numbers right-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    out = []
    for r in [headers, *rows]:
        out.append("  ".join(str(x).ljust(w) if i < 2 or i == len(widths) - 1 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip())
    return out


def print_plan(spec: SweepSpec, runs: list[Run], device: str, measured: bool) -> None:
    headers = ["#", "run", "depth", "params N", "FLOPs/token", "steps", "batch", "tokens D", "D/N", "FLOPs", "est. time", "status"]
    rows = []
    for i, r in enumerate(runs):
        est = "-" if r.est_s is None else format_duration(r.est_s)
        rows.append([str(i + 1), r.tag, str(r.depth), f"{r.scaling_params:,}", f"{r.flops_per_token:.3g}", f"{r.iterations:,}",
                     f"{r.total_batch_size:,}", f"{r.tokens:,}", f"{r.tokens / r.scaling_params:.3g}", f"{r.flops:.3g}", est, r.status])  # fmt: skip
    iso = spec.kind == "isoflop"
    what = f"{len(spec.depths)} depths × {len(spec.budgets)} budgets ({', '.join(budget_label(c) for c in spec.budgets)} FLOPs)" if iso else f"{len(spec.depths)} depths at {spec.ratio:g} tokens per parameter"
    print0(f"[bold]nanochat sweep {spec.kind} '{spec.sweep_name}'[/bold]: {what}, data {spec.data}")
    for line in text_table(headers, rows):  # plain columns: a log or a pipe gets the table unwrapped
        console().print(line, markup=False, highlight=False, soft_wrap=True)
    todo = [r for r in runs if r.status not in ("done", "trained")]
    known = [r.est_s for r in todo if r.est_s is not None]
    total = sum(known)
    how = (f"timed on {device}, {spec.measure_steps} step(s) per depth, on one device and uncompiled: compiled GPU runs are faster; "
           "evaluation not included") if measured else "no estimate: --measure-steps 0, no tokenizer or no such device here"  # fmt: skip
    print0(f"N = scaling parameters (transformer matrices + head); {sum(r.flops for r in runs):.3g} FLOPs and {sum(r.tokens for r in runs):,} tokens in all")
    if todo:
        print0(f"{len(todo)} of {len(runs)} runs to train, estimated {format_duration(total) if known else '-'} ({how})")
    core = "off (--max-per-task 0)" if spec.max_per_task == 0 else f"CORE with {'all' if spec.max_per_task < 0 else spec.max_per_task} examples per task"
    print0(f"each run is then evaluated: val bpb on the same {spec.bpb_tokens:,} validation tokens for all runs, {core}")
    print0(f"results in {sweep_dir(spec.sweep_name)}")


# ------------------------------------------------------------------------------------------------
# the sweep folder


def _tokenizer_id() -> str:
    from nanochat.data.tokenizer import META_FILE

    try:
        return json.loads((paths.tokenizer_dir() / META_FILE).read_text()).get("ranks_sha256", "")
    except (OSError, ValueError):
        return ""


def identity(spec: SweepSpec) -> dict:
    """What makes two invocations the same sweep: the kind, data, horizon rule, model and training options."""
    options = {k: v for k, v in spec.options.items() if k not in OWNED and k not in OPERATIONAL and k not in ("data",)}
    for key, _ in QUIET:
        options[key] = spec.options.get(key) if key in spec.explicit else -1
    ident = {"kind": spec.kind, "data": spec.data, "options": options, "bpb_tokens": spec.bpb_tokens, "tokenizer": _tokenizer_id()}
    if spec.kind == "miniseries":
        ident["ratio"] = spec.ratio
    return ident


def check_identity(spec: SweepSpec, dry_run: bool) -> dict | None:
    """The recorded sweep.json; an error (a warning in a dry run) when it was made with other options."""
    p = sweep_dir(spec.sweep_name) / "sweep.json"
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise NanochatError(f"{p} is damaged ({e}); delete the folder {p.parent} to start the sweep over") from None
    now, was = identity(spec), rec.get("identity", {})
    label = {"kind": "the kind", "data": "--data", "bpb_tokens": "--bpb-tokens", "ratio": "--ratio", "tokenizer": "the tokenizer"}
    diff = [f"{label.get(k, k)} ({was[k]!r} then, {now[k]!r} now)" if k != "tokenizer" else "the tokenizer (retrained since)"
            for k in now if k != "options" and k in was and was[k] != now[k]]  # fmt: skip
    diff += [f"--{k.replace('_', '-')} ({was['options'][k]!r} then, {v!r} now)" for k, v in now["options"].items() if k in was.get("options", {}) and was["options"][k] != v]
    if diff:
        msg = f"the sweep '{spec.sweep_name}' in {p.parent} was made with other options: {', '.join(diff)}; rerun with those, or pass another --name"
        if dry_run:
            warn0(msg)
        else:
            raise NanochatError(msg)
    return rec


def pack_val_rows(data: str, tokenizer, seq_len: int, tokens: int):
    """The first ⌈tokens / seq_len⌉ rows of seq_len+1 tokens of the validation split: one contiguous stream of its
    documents, each after a BOS token; consecutive rows share one token, so every token is a target once."""
    import itertools

    import numpy as np

    from nanochat.data.corpus import open_corpus
    from nanochat.eval.bpb import token_stream_batches

    n_rows = max(1, -(-tokens // seq_len))
    docs = (text for text, _ in open_corpus(data, "val").iter_docs(loop=False))
    rows = [np.concatenate([x[0].numpy(), y[0, -1:].numpy()]) for x, y in itertools.islice(token_stream_batches(tokenizer, docs, 1, seq_len, "cpu"), n_rows)]
    if not rows:
        raise NanochatError(f"the validation split of {data!r} holds fewer than {seq_len + 1} tokens; use a larger data set or a shorter --max-seq-len")
    if len(rows) < n_rows:
        warn0(f"the validation split of {data!r} holds only {len(rows) * seq_len:,} tokens; every run is scored on all of them")
    return np.stack(rows).astype(np.int32)


def prepare_folder(spec: SweepSpec, tokenizer, seq_len: int):
    """Write sweep.json (first time) and the validation rows (packed once); returns the rows."""
    import numpy as np

    d = sweep_dir(spec.sweep_name)
    p, vp = d / "sweep.json", d / "val_tokens.npy"
    rec = json.loads(p.read_text()) if p.is_file() else None
    if rec is not None and vp.is_file():
        raw = vp.read_bytes()
        if hashlib.sha256(raw).hexdigest() != rec.get("val_tokens_sha256"):
            raise NanochatError(f"{vp} does not match its checksum in {p}; the runs' val bpb would not be comparable: delete the sweep folder {d} to start over")
        return np.load(io.BytesIO(raw), allow_pickle=False)
    if rec is not None and list((d / "runs").glob("*.json")):
        raise NanochatError(f"{vp} is missing, so new runs could not be scored on the earlier runs' tokens; delete the sweep folder {d} to start over")
    rows = pack_val_rows(spec.data, tokenizer, seq_len, spec.bpb_tokens)
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    atomic_write_bytes(vp, buf.getvalue())
    atomic_write_json(p, {"version": SWEEP_VERSION, "name": spec.sweep_name, "identity": identity(spec), "created": time.time(),
                          "val_tokens_sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "val_rows": int(rows.shape[0]), "seq_len": seq_len,
                          "pretrain_args": list(spec.pretrain_args)})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------
# training and evaluating one run


class _Signals(StopSignal):
    """SIGINT/SIGTERM during the sweep: remembered, and a SIGTERM passed on to the running pretrain (which
    saves a checkpoint); a terminal's Ctrl-C reaches it already. A second signal stops at once."""

    child: subprocess.Popen | None = None

    def _handle(self, signum, frame) -> None:
        super()._handle(signum, frame)
        if self.child is not None and self.child.poll() is None and signum == signal.SIGTERM:
            self.child.send_signal(signal.SIGTERM)


def run_pretrain_process(run: Run, signals: _Signals) -> int:
    """`python -m nanochat pretrain ...`, its output straight to ours; returns the exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "nanochat", *run.args])
    signals.child = proc
    try:
        return proc.wait()
    finally:
        signals.child = None


@contextmanager
def keep_pretrain_section() -> Iterator[None]:
    """Put back the report card's pretrain section as it was: a sweep run is not the pipeline's base model."""
    from nanochat.eval.report import sections_dir

    p = sections_dir() / "pretrain.json"
    before = p.read_bytes() if p.is_file() else None
    try:
        yield
    finally:
        if before is None:
            p.unlink(missing_ok=True)
        elif not p.is_file() or p.read_bytes() != before:
            atomic_write_bytes(p, before)


def val_bpb_on_rows(model, rows, batch_size: int, token_bytes, device) -> float:
    """Bits per byte of `model` on the fixed rows (inputs row[:-1], targets row[1:])."""
    import torch

    t = torch.from_numpy(rows.astype("int64"))

    def batches():
        for i in range(0, t.shape[0], batch_size):
            chunk = t[i : i + batch_size].to(device)
            yield chunk[:, :-1], chunk[:, 1:]

    from nanochat.eval.bpb import evaluate_bpb

    return evaluate_bpb(model, batches(), None, token_bytes)


class CachedBundle:
    """A CORE bundle whose task data is read once per sweep, not once per run (it is the same for every run)."""

    def __init__(self, bundle) -> None:
        self._bundle = bundle
        self._data: dict[str, list[dict]] = {}

    def __getattr__(self, name: str):
        return getattr(self._bundle, name)

    def load_data(self, dataset_uri: str) -> list[dict]:
        if dataset_uri not in self._data:
            self._data[dataset_uri] = self._bundle.load_data(dataset_uri)
        return self._data[dataset_uri]


def evaluate_run(run: Run, spec: SweepSpec, rows, device: str, bundle=None) -> dict:
    """Val bpb on the sweep's rows and CORE of the run's final checkpoint, with its plan: the run's result."""
    from nanochat.engine.loading import load_model

    info = ck.find_latest("base", run.tag)
    if info is None or info.step < run.iterations:
        at = "no checkpoint" if info is None else f"its newest checkpoint is step {info.step}"
        raise NanochatError(f"run {run.tag} should end at step {run.iterations} but {at}; rerun the sweep to continue it")
    meta = ck.load_meta(info.path)
    t0 = time.time()
    model, tokenizer, _ = load_model("base", run.tag, info.step, device=device, quiet=True)
    bpb = val_bpb_on_rows(model, rows, run.config.device_batch_size, tokenizer.token_bytes(), device)
    core, label = None, None
    if spec.max_per_task != 0:
        from nanochat.eval.core import evaluate_core, find_bundle

        res = evaluate_core(model, tokenizer, bundle or find_bundle(), device, spec.max_per_task, None, batch_rows=8)
        core, label = (res.core if math.isfinite(res.core) else None), res.label
    del model
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()  # hand the memory back before the next run trains on this GPU
    return {
        "sweep": spec.sweep_name, "kind": spec.kind, "tag": run.tag, "budget": run.budget, "depth": run.depth, "params": run.params,
        "scaling_params": run.scaling_params, "flops_per_token": run.flops_per_token, "iterations": run.iterations,
        "total_batch_size": run.total_batch_size, "tokens": run.tokens, "tokens_per_param": run.tokens / run.scaling_params,
        "flops": run.flops, "val_bpb": bpb, "core": core, "core_label": label,
        "train_time_s": meta.get("loop_state", {}).get("total_training_time"), "eval_time_s": time.time() - t0,
        "step": info.step, "args": list(run.args), "finished": time.time(),
    }  # fmt: skip


def write_csv(name: str, results: list[dict]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS})
    return atomic_write_text(sweep_dir(name) / "sweep.csv", buf.getvalue())


# ------------------------------------------------------------------------------------------------
# fits, plots, report


def fit_points(results: list[dict]) -> list[tuple[float, float, float, float]]:
    return [(r["budget"], r["scaling_params"], r["tokens"], r["val_bpb"]) for r in results if r.get("budget") is not None and r.get("val_bpb") is not None]


def finish(spec: SweepSpec, results: list[dict]) -> dict:
    """The fits (isoflop), plots, fit.json and the report section, from every finished run."""
    from nanochat.eval.report import record_section
    from nanochat.eval.scaling_fit import describe, fit_isoflop
    from nanochat.eval.scaling_plots import plot_isoflop, plot_scaling

    name, d = spec.sweep_name, sweep_dir(spec.sweep_name)
    plots = [plot_scaling(results, d / "scaling.png", f"sweep {name} ({spec.kind}, data {spec.data})")]
    out: dict = {"csv": str(d / "sweep.csv"), "runs": len(results)}
    lines: list[str] = []
    if spec.kind == "isoflop":
        fit = fit_isoflop(fit_points(results), bootstrap=spec.bootstrap)
        lines = describe(fit)
        plots.append(plot_isoflop(results, fit, d / "isoflop.png", f"IsoFLOP sweep {name} (val bpb, data {spec.data})"))
        fj = {
            "optima": [{"budget": o.budget, "n_opt": o.n_opt, "d_opt": o.d_opt, "val_bpb": o.loss, "in_range": o.in_range,
                        "parabola_log10n": [o.parabola.a, o.parabola.b, o.parabola.c]} for o in fit.optima],
            "skipped": {budget_label(c): why for c, why in fit.skipped.items()}, "note": fit.bootstrap_note,
        }  # fmt: skip
        for sym, law, unc in (("a", fit.n_law, fit.n_unc), ("b", fit.d_law, fit.d_unc)):
            if law is not None:
                fj[sym] = law.exponent
                fj[f"{sym}_coefficient"] = law.coefficient
                if unc is not None:
                    fj.update({f"{sym}_std": unc.std, f"{sym}_low95": unc.low, f"{sym}_high95": unc.high})
        atomic_write_json(d / "fit.json", _json_safe(fj))
        out["fit"] = fj
    plots = [p for p in plots if p is not None]
    out["plots"] = [str(p) for p in plots]
    headers = ["run", "budget", "depth", "N", "D", "FLOPs", "val bpb", "CORE"]
    table_md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in results:
        core = "-" if r.get("core") is None else f"{r['core']:.4f}"
        budget = "-" if r.get("budget") is None else budget_label(r["budget"])
        table_md.append(f"| {r['tag']} | {budget} | {r['depth']} | {r['scaling_params']:,} | {r['tokens']:,} | {r['flops']:.3g} | {r['val_bpb']:.4f} | {core} |")
    data = {"kind": spec.kind, "data": spec.data, "runs": len(results), "csv": str(d / "sweep.csv"), "val_tokens": spec.bpb_tokens,
            "runs_table": "\n".join(table_md)}  # fmt: skip
    core_labels = {r["core_label"] for r in results if r.get("core_label")}
    if core_labels:
        data["core_label"] = ", ".join(sorted(core_labels))
    if lines:
        data["fit"] = "\n".join(f"- {line}" for line in lines)
    for sym in ("a", "b"):
        for suffix in ("", "_std"):
            if f"{sym}{suffix}" in out.get("fit", {}):
                data[f"exponent_{sym}{suffix}"] = out["fit"][f"{sym}{suffix}"]
    if plots:
        # report.md lives in <home>/report/, the plots in <home>/sweeps/<name>/
        data["plots"] = "\n".join(f"![{p.stem}](../sweeps/{name}/{p.name})" for p in plots) + "\n"
    record_section(f"sweep-{name}", data, title=f"Scaling sweep '{name}' ({spec.kind})")
    out["lines"] = lines
    return out


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------
# the whole sweep


def _tokenizer_and_device(spec: SweepSpec):
    """(tokenizer or None, vocabulary size, device, whether steps can be timed there); a dry run plans without
    a tokenizer (a 32,768-token vocabulary) or the device (no timing), a real run needs both and its data."""
    from nanochat.common.device import detect_device

    try:
        from nanochat.data.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
        vocab = tokenizer.vocab_size
    except NanochatError:
        if not spec.dry_run:
            raise
        tokenizer, vocab = None, 32768
        warn0("no tokenizer yet (`nanochat tokenize-train`): planning with a 32,768-token vocabulary and no time estimate")
    if not spec.dry_run:
        from nanochat.data.corpus import open_corpus

        open_corpus(spec.data, "train")  # fail now, naming what to download or import, rather than in the first run
        open_corpus(spec.data, "val")
    try:
        device = detect_device(spec.device)
        can_time = True
    except NanochatError:
        if not spec.dry_run:
            raise
        device, can_time = spec.device, False  # e.g. planning a GPU sweep on a machine without one: no timing
    return tokenizer, vocab, device, can_time


def _train_and_evaluate(spec: SweepSpec, runs: list[Run], runner: Callable[[Run, _Signals], int], rows, device: str) -> None:
    """Train every run not trained yet and evaluate every run not evaluated yet, writing sweep.csv after each;
    a signal stops the sweep between runs (or after the interrupted run's checkpoint), resumable by rerunning."""
    bundle = None
    signals = _Signals().install()
    try:
        for i, r in enumerate(runs):
            if r.status == "done":
                print0(f"run {i + 1}/{len(runs)} {r.tag}: done, skipped (val bpb {r.result['val_bpb']:.4f})")
                continue
            console().rule(f"run {i + 1}/{len(runs)}: {r.tag}")
            if r.status != "trained":
                print0(f"$ {r.command}")
                with keep_pretrain_section():
                    rc = runner(r, signals)
                if signals.requested:
                    raise NanochatError(f"{signals.signame}: the sweep stopped during run {r.tag} (its checkpoint, if any, is saved); "
                                        "run the same command again to continue")  # fmt: skip
                if rc != 0:
                    raise NanochatError(f"run {r.tag} failed (exit code {rc}); fix what it reported above and rerun the same command: "
                                        "finished runs are skipped and this one resumes")  # fmt: skip
            print0(f"evaluating {r.tag} ...")
            if bundle is None and spec.max_per_task != 0:
                from nanochat.eval.core import find_bundle

                bundle = CachedBundle(find_bundle())
            res = evaluate_run(r, spec, rows, device, bundle)
            atomic_write_json(_result_path(spec.sweep_name, r.tag), _json_safe(res))
            r.status, r.result = "done", res
            core = "" if res["core"] is None else f", {res['core_label']} {res['core']:.4f}"
            print0(f"run {i + 1}/{len(runs)} {r.tag}: val bpb {res['val_bpb']:.4f}{core} ({res['eval_time_s']:.1f}s to evaluate)")
            write_csv(spec.sweep_name, read_results(spec.sweep_name))
            if signals.requested:
                raise NanochatError(f"{signals.signame}: the sweep stopped after run {r.tag}; run the same command again to continue")
    finally:
        signals.uninstall()


def run_sweep(spec: SweepSpec, runner: Callable[[Run, _Signals], int] = run_pretrain_process) -> dict:
    """Plan, then train and evaluate every unfinished run, then fit and plot; returns
    {"runs": [Run], "results": [dict], "csv", "plots", "fit", "lines"} (only "runs" for a dry run)."""
    spec.validate()
    tokenizer, vocab, device, can_time = _tokenizer_and_device(spec)
    check_identity(spec, spec.dry_run)
    runs = plan_runs(spec, vocab, device)
    tags = [r.tag for r in runs]
    if len(set(tags)) != len(tags):
        raise UsageError("two runs of the sweep would share a model tag; give each depth and budget once")
    run_status(spec, runs)
    measure = spec.measure_steps > 0 and tokenizer is not None and can_time
    if measure:
        print0(f"timing {spec.measure_steps} training steps per depth on {device} for the estimate ...")
        estimate_times(runs, vocab, device, spec.measure_steps)
    print_plan(spec, runs, device, measure)
    if spec.dry_run:
        for i, r in enumerate(runs):
            console().print(f"{i + 1}. {r.tag}: $ {r.command}", markup=False, highlight=False, soft_wrap=True)
        print0("dry run: nothing trained")
        return {"runs": runs}

    rows = prepare_folder(spec, tokenizer, runs[0].config.max_seq_len)
    t_start = time.time()
    _train_and_evaluate(spec, runs, runner, rows, device)
    results = read_results(spec.sweep_name)
    csv_path = write_csv(spec.sweep_name, results)
    out = finish(spec, results)
    for line in out["lines"]:
        print0(line)
    print0(f"sweep done in {format_duration(time.time() - t_start)}: {len(results)} runs in {csv_path}; plots: {', '.join(out['plots']) or 'none (matplotlib missing)'}")
    return {"runs": runs, "results": results, **out}
