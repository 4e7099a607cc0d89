"""`nanochat speedrun`: every stage, in order, as one resumable run that ends in a report card.

Stages (each one `python -m nanochat <command> ...`; `plan()` builds their exact command lines):

    download       nanochat data download --for-depth D          (web runs only)
    prepare-evals  nanochat data prepare-evals                   (web runs only; the demo uses the packaged CORE)
    tokenizer      nanochat tokenize-train ...
    pretrain       nanochat pretrain ... --resume auto
    base-eval      nanochat eval --source base --tasks core,bpb
    sft            nanochat sft ... --resume auto
    rl             nanochat rl ... --resume auto                 (the demo: --task demo-arith; `--skip rl` leaves RL out)
    chat-eval      nanochat eval --source sft
    demo-prompts   nanochat chat --source rl --score-prompts demo    (demo runs: everyday prompts, scored; sft without RL)
    rl-eval        nanochat eval --source rl
    report         nanochat report

Why subprocesses: each stage is the very command a user would type (the plan prints them, so any
stage can be rerun by hand), it gets a fresh process (pretrain and sft relaunch themselves under
torchrun on several GPUs; a stage's memory is returned before the next starts), and a crash in one
stage cannot leave state behind in the next.

Resuming: `<NANOCHAT_HOME>/speedrun/state.json` (written atomically after every stage) records each
finished stage with its command line. A rerun skips the leading stages that finished with the same
command line and continues with the first that did not; the training stages themselves resume from
their newest checkpoint (`--resume auto`). A changed stage command (other flags) reruns that stage
and every stage after it. `--from-stage S` reruns from S on, whatever is recorded (the stages before
S are taken as done). A SIGINT/SIGTERM stops the running stage (it saves a checkpoint) and the run;
that stage is not marked finished.

Timing: each stage's wall time is measured around its process and recorded in the state file; the
card's Timings (the `speedrun` report section) lists every finished stage and their sum, which is
the total the run prints. The report stage's own time is known only once it ends, so the speedrun
then adds it and rewrites the card's text (the plots are already drawn).

A fresh run (no stage recorded) moves the report sections of any earlier run aside
(`report/previous-<time>/`), so the report card describes this run only.

CPU threads (demo runs): before each stage the speedrun looks at how busy the CPUs are. When other
processes keep some of them busy, the stage runs with one torch thread per free core (at least one),
because torch's threads spin while they wait for each other: two threads on a 2-core machine that
another job also uses are several times slower than one. OMP_NUM_THREADS, when set, always wins.

The demo (`DEMO`) is sized for what a CPU can teach in a few minutes: a 4-layer, 128-wide model
pretrained briefly on the Austen novels, then fine-tuned for many short steps on a small mixture of
short conversations (greetings, who it is, questions about the novels, calculator sums, the packaged
ChatterBot answers, a few DemoArith word problems; see `train.sft_data`), so that its chat answers are
on topic; the `demo-prompts` stage scores them. RL then trains on DemoArith: the SFT model solves about a
third of the held-out problems (few of them were in its mixture), so most groups of rollouts have rewards
that differ, and 30 steps raise held-out pass@1 by well over 10 points. The RL learning rates are low and
the embedding and output head stay fixed: RL on one narrow task otherwise wears down the chat answers
the demo-prompts stage scores (Muon and Adam give rare directions full-size steps).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from nanochat.common import paths
from nanochat.common.atomic import atomic_write_json
from nanochat.common.errors import NanochatError, UsageError
from nanochat.common.logging import console, print0, table, warn0
from nanochat.train.loop import StopSignal

STATE_VERSION = 1
SPEEDRUN_RATIO = 8.0  # training tokens per scaling parameter in the reference's speedrun (d24 at ratio 8)


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]  # after `nanochat`
    what: str
    cpu_sized: bool = False  # a CPU-sized (demo) stage: its torch threads follow how busy the CPUs are

    @property
    def command(self) -> str:
        return "nanochat " + shlex.join(self.args)


@dataclass(frozen=True)
class Scale:
    """The sizes of a run; `demo` and `tiny` (tests) are CPU-sized."""

    data: str
    vocab_size: int
    max_chars: str
    depth: int
    model_args: tuple[str, ...]  # pretrain flags beyond --depth
    pretrain_args: tuple[str, ...]
    base_eval_args: tuple[str, ...]
    sft_args: tuple[str, ...]
    chat_eval_args: tuple[str, ...]
    rl_args: tuple[str, ...]
    offline: bool


DEMO = Scale(
    data="demo", vocab_size=4096, max_chars="2e7", depth=4,
    # width 128 (2 heads of 64), ~3M parameters; 1,024-token steps; one tokenizer thread (the CPU is the trainer's).
    # --backout: the demo recipe (SFT mixture, RL rates, prompt score) was tuned and measured with it, as it was the
    # default then; the GPU default dropped it after the d12 benchmark, which says nothing about this tiny model.
    model_args=("--aspect-ratio", "32", "--head-dim", "64", "--max-seq-len", "256", "--device-batch-size", "4", "--tokenizer-threads", "1",
                "--backout"),
    # CPU batches are tiny (1,024 tokens), so the √(B/B_ref) LR scaling would leave LRs ~16× too small: raise them 10×.
    # A short pretraining: what the chat model says comes mostly from the fine-tuning steps below.
    pretrain_args=("--num-iterations", "150", "--total-batch-size", "1024", "--eval-every", "150", "--eval-tokens", "8192", "--sample-every", "-1",
                   "--matrix-lr", "0.2", "--embedding-lr", "3", "--unembedding-lr", "0.08", "--warmup-steps", "20"),
    base_eval_args=("--max-per-task", "12"),
    # many short steps on short conversations (train.sft_data's demo mixture, about one pass)
    sft_args=("--num-iterations", "300", "--eval-every", "150", "--eval-tokens", "8192"),
    chat_eval_args=("--tasks", "arc-easy,arc-challenge,mmlu,gsm8k,spellingbee", "--max-per-task", "20", "--max-new-tokens", "64"),
    # RL on DemoArith, whose format the model met in SFT (GSM8K is beyond it: every reward would be 0); pass@1 before and after.
    # Only the block matrices learn, at a low LR: with the embedding and head learning too, or at 2.5x the LR, the same gain
    # cost half the demo prompts (measured: benchmarks/README.md, "Demo RL").
    rl_args=("--task", "demo-arith", "--num-iterations", "30", "--examples-per-step", "8", "--num-samples", "8", "--device-batch-size", "8",
             "--max-new-tokens", "24", "--init-lr-frac", "0.08", "--embedding-lr", "0", "--unembedding-lr", "0",
             "--eval-every", "30", "--eval-examples", "100"),
    offline=True,
)  # fmt: skip
TINY = Scale(
    data="demo", vocab_size=512, max_chars="4e5", depth=2,
    model_args=("--aspect-ratio", "32", "--head-dim", "32", "--max-seq-len", "64", "--device-batch-size", "4", "--tokenizer-threads", "1"),
    pretrain_args=("--num-iterations", "40", "--total-batch-size", "256", "--eval-every", "20", "--eval-tokens", "512", "--sample-every", "-1", "--warmup-steps", "5",
                   "--matrix-lr", "0.2", "--embedding-lr", "3", "--unembedding-lr", "0.08"),
    base_eval_args=("--max-per-task", "2"),
    sft_args=("--num-iterations", "10", "--eval-every", "5", "--eval-tokens", "512"),
    chat_eval_args=("--tasks", "arc-easy,spellingbee", "--max-per-task", "2", "--max-new-tokens", "8"),
    rl_args=("--task", "demo-arith", "--num-iterations", "2", "--examples-per-step", "2", "--num-samples", "2", "--device-batch-size", "2",
             "--max-new-tokens", "8", "--eval-every", "2", "--eval-examples", "2"),
    offline=True,
)  # fmt: skip


def web_scale(depth: int, ratio: float) -> Scale:
    return Scale(data="web", vocab_size=32768, max_chars="2e9", depth=depth, model_args=(),
                 pretrain_args=("--target-param-data-ratio", f"{ratio:g}"), base_eval_args=(), sft_args=(), chat_eval_args=(),
                 rl_args=(), offline=False)  # fmt: skip


def _chat_eval_what(args: tuple[str, ...]) -> str:
    """What the chat-eval stage computes: ChatCORE is partial when the stage evaluates only some of its tasks."""
    from nanochat.tasks.registry import chatcore_names

    members = chatcore_names()
    tasks = args[args.index("--tasks") + 1].split(",") if "--tasks" in args else list(members)
    k = sum(t in tasks for t in members)
    return "chat tasks and ChatCORE" if k == len(members) else f"chat tasks and ChatCORE (partial: {k} of {len(members)} tasks)"


# chars per token of a BPE trained on English prose (the demo's 512 and 4,096 measured on the Austen
# validation novel; larger sizes as the web estimate): for the plan's epoch estimate only
CHARS_PER_TOKEN_AT = {512: 2.2, 4096: 3.9}


def pretrain_epochs(scale: Scale, depth: int, ratio: float) -> str:
    """', ≈N epochs of it' for the pretrain stage's line: the characters pretraining reads over the data's
    train characters (empty when the data's size is unknown)."""
    from nanochat.data.catalog import dataset_info
    from nanochat.data.download import CHARS_PER_TOKEN, CROP_LOSS, shards_for_depth

    info = dataset_info(scale.data)
    if info is None or not info.train_chars:
        return ""
    args = scale.pretrain_args
    if "--num-iterations" in args:
        tokens = int(args[args.index("--num-iterations") + 1]) * int(args[args.index("--total-batch-size") + 1])
        chars = tokens / (1 - CROP_LOSS) * CHARS_PER_TOKEN_AT.get(scale.vocab_size, CHARS_PER_TOKEN)
    else:
        chars = shards_for_depth(depth, ratio, scale.vocab_size)["chars"]
    epochs = chars / info.train_chars
    shown = f"{epochs:.2f}" if epochs < 1 else f"{epochs:,.1f}"
    return f", ≈{shown} epochs of its {info.chars_text} train characters" + (" (a small data set: consider a smaller --depth)" if epochs > 10 else "")


def rl_available() -> bool:
    """Whether `nanochat rl` is built in this version (its training module exists)."""
    return importlib.util.find_spec("nanochat.train.rl") is not None


def plan(depth: int = 26, demo: bool = False, tiny: bool = False, with_rl: bool = True, device: str = "auto", nproc: int | None = None,
         ratio: float = SPEEDRUN_RATIO, data: str | None = None, sft_add: tuple[str, ...] = ()) -> list[Stage]:  # fmt: skip
    """The stages of a run, with their exact command lines; `data` (your own text) replaces the scale's
    pretraining data, and `sft_add` (your conversation sets) joins the scale's SFT mixture."""
    scale = TINY if tiny else DEMO if demo else web_scale(depth, ratio)
    sft_data = scale.data  # the default mixture of the scale: your text changes what the model reads, not how it learns to chat
    own = data is not None and data != scale.data
    if own:
        scale = replace(scale, data=data)
    tag = "demo" if (demo or tiny) else f"d{depth}"
    dev = ("--device", device)
    # the demo's batches are one micro-batch of one process (the same run on a CPU or a GPU): one process unless told
    procs = ("--nproc", str(nproc)) if nproc is not None else ("--nproc", "1") if (demo or tiny) else ()
    off = ("--offline",) if scale.offline else ()
    stages: list[Stage] = []
    if scale.data == "web":  # your own data needs no download; the evals' data still does
        stages.append(Stage("download", ("data", "download", "--for-depth", str(depth), "--ratio", f"{ratio:g}"), "pretraining shards for this depth"))
    if not scale.offline:
        stages.append(Stage("prepare-evals", ("data", "prepare-evals"), "CORE bundle and chat eval sets"))
    bpb_data = ("--data", scale.data) if own else ()
    adds = tuple(a for spec in sft_add for a in ("--add", spec))
    stages += [
        Stage("tokenizer", ("tokenize-train", "--data", scale.data, "--vocab-size", str(scale.vocab_size), "--max-chars", scale.max_chars), f"BPE tokenizer on {scale.data!r}"),
        Stage("pretrain", ("pretrain", "--data", scale.data, "--depth", str(scale.depth), *scale.model_args, *scale.pretrain_args,
                           "--model-tag", tag, "--resume", "auto", *dev, *procs), f"base model on {scale.data!r}" + (pretrain_epochs(scale, depth, ratio) if own else "")),
        Stage("base-eval", ("eval", "--source", "base", "--model-tag", tag, "--tasks", "core,bpb", *bpb_data, *scale.base_eval_args, *off, *dev, *procs),
              f"CORE and bits per byte on {scale.data!r} val"),
        Stage("sft", ("sft", "--source", "base", "--model-tag", tag, "--data", sft_data, *adds, *scale.sft_args, "--resume", "auto", *dev, *procs),
              f"chat fine-tuning on the {sft_data} mixture" + "".join(f" + {spec}" for spec in sft_add)),
    ]  # fmt: skip
    rl = with_rl and rl_available()
    if with_rl and not rl:
        warn0("`nanochat rl` is not built in this version; the run skips RL")
    if rl:
        task = "demo-arith" if "demo-arith" in scale.rl_args else "GSM8K"
        stages.append(Stage("rl", ("rl", "--source", "sft", "--model-tag", tag, *scale.rl_args, "--resume", "auto", *dev, *procs), f"RL on {task}"))
    stages.append(Stage("chat-eval", ("eval", "--source", "sft", "--model-tag", tag, *scale.chat_eval_args, *off, *dev, *procs), _chat_eval_what(scale.chat_eval_args)))
    if demo or tiny:  # the model `nanochat chat` then talks with: the RL one when RL ran
        chat_src = "rl" if rl else "sft"
        stages.append(Stage("demo-prompts", ("chat", "--source", chat_src, "--model-tag", tag, "--score-prompts", "demo", *dev), "everyday prompts, answered and scored"))
    if rl:
        rl_eval = scale.chat_eval_args
        if scale.offline and task == "GSM8K":  # offline, GSM8K RL trains on a partition of GSM8K test: `eval --tasks gsm8k` would score seen problems
            rl_eval = tuple(",".join(t for t in a.split(",") if t != "gsm8k") if a.startswith("arc-") else a for a in rl_eval)
        stages.append(Stage("rl-eval", ("eval", "--source", "rl", "--model-tag", tag, *rl_eval, *off, *dev, *procs), "chat tasks after RL"))
    stages.append(Stage("report", ("report",), "report.md and plots"))
    if demo or tiny:
        stages = [replace(s, cpu_sized=True) for s in stages]
    return stages


# ------------------------------------------------------------------------------------------------
# state


def state_path() -> Path:
    return paths.home() / "speedrun" / "state.json"


def load_state() -> dict:
    p = state_path()
    if not p.is_file():
        return {"version": STATE_VERSION, "stages": {}}
    try:
        state = json.loads(p.read_text())
        if not isinstance(state.get("stages"), dict):
            raise ValueError("no stages")
    except (OSError, ValueError, AttributeError) as e:
        raise NanochatError(f"the speedrun state {p} is damaged ({e}); delete it to start over, or pass --from-stage") from None
    return state


def save_state(state: dict) -> None:
    atomic_write_json(state_path(), state)


def stages_to_run(stages: list[Stage], state: dict, from_stage: str | None) -> list[tuple[Stage, str]]:
    """(stage, 'run' | 'done' | 'skip') for every stage: the leading finished stages with unchanged
    commands are 'done'; with --from-stage the stages before it are 'skip' and it and all after 'run'."""
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise UsageError(f"--from-stage {from_stage!r} is not a stage of this run; use one of {', '.join(names)}")
    out = []
    running = False
    for s in stages:
        if from_stage is not None:
            running = running or s.name == from_stage
            out.append((s, "run" if running else "skip"))
            continue
        rec = state["stages"].get(s.name)
        if not running and rec is not None and rec.get("args") == list(s.args):
            out.append((s, "done"))
        else:
            running = True
            out.append((s, "run"))
    return out


def _archive_report() -> Path | None:
    """Move an earlier run's report sections aside (a fresh run's card describes that run only)."""
    from nanochat.eval.report import sections_dir

    d = sections_dir()
    if not d.is_dir() or not any(d.iterdir()):
        return None
    dest = paths.report_dir() / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(d, dest)
    return dest


# ------------------------------------------------------------------------------------------------
# running


class _Signals(StopSignal):
    """SIGINT/SIGTERM while a stage runs: remembered (the stage is then not marked finished), and a SIGTERM is
    passed on to the stage (a terminal's Ctrl-C reaches it already). A second signal stops at once."""

    child: subprocess.Popen | None = None

    def _handle(self, signum, frame) -> None:
        super()._handle(signum, frame)
        if self.child is not None and self.child.poll() is None and signum == signal.SIGTERM:
            self.child.send_signal(signal.SIGTERM)


def cpus_busy_elsewhere(interval: float = 0.5) -> float | None:
    """How many of the machine's CPUs other processes kept busy over `interval` seconds (from
    /proc/stat, while this process waits), or None where that cannot be read (not Linux)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def _cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stage_threads(busy: float | None, cpus: int) -> int | None:
    """Torch threads for a CPU-sized stage: one per CPU the other processes leave free (at least 1),
    or None (torch's default) when the machine is idle enough or its load is unknown."""
    if busy is None:
        return None
    free = max(1, int(cpus - busy + 0.5))
    return free if free < cpus else None


def stage_env(stage: Stage) -> dict[str, str] | None:
    """The environment of a stage: ours, with OMP_NUM_THREADS chosen for a CPU-sized stage on a busy
    machine (see the module docstring); None (inherit ours) otherwise."""
    if not stage.cpu_sized or "OMP_NUM_THREADS" in os.environ:
        return None
    cpus = os.cpu_count() or 1
    busy = cpus_busy_elsewhere()
    threads = stage_threads(busy, cpus)
    if threads is None:
        return None
    threads = min(threads, _cpu_count())
    print0(f"the CPUs are busy ({busy:.1f} of {cpus} in use by other processes): this stage runs with {threads} thread{'s' if threads > 1 else ''} "
           "(set OMP_NUM_THREADS to choose)")  # fmt: skip
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run_stage(stage: Stage, signals: _Signals) -> int:
    """Run one stage as `python -m nanochat ...`, its output straight to ours; returns the exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "nanochat", *stage.args], env=stage_env(stage))
    signals.child = proc
    try:
        return proc.wait()
    finally:
        signals.child = None


def print_plan(decisions: list[tuple[Stage, str]], title: str) -> None:
    """One line per stage with its status, then its exact command line (plain, to copy)."""
    label = {"run": "to run", "done": "done, skipped", "skip": "skipped (--from-stage)"}
    print0(f"[bold]{title}[/bold]")
    for i, (s, d) in enumerate(decisions):
        print0(f"{i + 1}. {s.name} ({s.what}): {label[d]}")
        console().print(f"     $ {s.command}", markup=False, highlight=False, soft_wrap=True)


def speedrun(depth: int = 26, demo: bool = False, tiny: bool = False, with_rl: bool = True, from_stage: str | None = None,
             dry_run: bool = False, device: str = "auto", nproc: int | None = None, ratio: float = SPEEDRUN_RATIO, runner=run_stage,
             data: str | None = None, sft_add: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Run (or continue) the whole pipeline; returns {"stages": {name: seconds}, "total_s", "report"}."""
    if depth < 1:
        raise UsageError(f"--depth {depth} must be at least 1")
    if ratio <= 0:
        raise UsageError(f"--target-param-data-ratio {ratio} must be positive")
    data, sft_add = check_own_data(data, sft_add)
    stages = plan(depth, demo, tiny, with_rl, device, nproc, ratio, data, sft_add)
    state = load_state()
    decisions = stages_to_run(stages, state, from_stage)
    kind = "demo (packaged data, CPU-sized)" if (demo or tiny) else f"depth {depth} on web data"
    if data is not None:
        kind = kind.replace("packaged data", "your data").replace("web data", "your data") + f": {data}"
    print_plan(decisions, f"nanochat speedrun: {kind}")
    if dry_run:
        print0(f"dry run: nothing run; the state of finished stages is kept in {state_path()}")
        return {"stages": {}, "total_s": 0.0, "report": None}

    if not state["stages"] and from_stage is None:
        moved = _archive_report()
        if moved:
            print0(f"a fresh run: the report sections of the earlier run are moved to {moved}")
    if from_stage is not None:
        later = {s.name for s, d in decisions if d == "run"}
        state["stages"] = {k: v for k, v in state["stages"].items() if k not in later}
        save_state(state)
    state.setdefault("started", time.time())
    times: dict[str, float] = {}
    signals = _Signals().install()
    try:
        for i, (stage, decision) in enumerate(decisions):
            if decision != "run":
                continue
            if stage.name == "report":
                _record_speedrun_section(state, stages)  # the card lists every stage before this one
            console().rule(f"stage {i + 1}/{len(stages)}: {stage.name} — {stage.what}")
            print0(f"$ {stage.command}")
            # the stage's wall time: its whole process, start-up and model loading included
            t0 = time.perf_counter()
            rc = runner(stage, signals)
            dt = time.perf_counter() - t0
            if signals.requested:
                raise NanochatError(f"{signals.signame}: stopped during stage {stage.name} (its checkpoint, if any, is saved); "
                                    "run the same `nanochat speedrun` command again to continue")  # fmt: skip
            if rc != 0:
                raise NanochatError(f"stage {stage.name} failed (exit code {rc}); fix what it reported above and rerun the same "
                                    f"`nanochat speedrun` command: it continues at {stage.name}")  # fmt: skip
            times[stage.name] = dt
            state["stages"][stage.name] = {"args": list(stage.args), "finished": time.time(), "seconds": dt}
            save_state(state)
            print0(f"stage {stage.name} took {_fmt_seconds(dt)}")
            if stage.name == "report":
                # now the report stage's own time is known: add it to the card (text only; the plots are drawn)
                _record_speedrun_section(state, stages)
                from nanochat.eval.report import generate_report

                generate_report(draw=False)
    finally:
        signals.uninstall()
    report = paths.report_dir() / "report.md"
    _print_summary(_stage_seconds(state, stages), times, report)
    return {"stages": times, "total_s": sum(times.values()), "report": report}


def check_own_data(data: str | None, sft_add: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """Before any stage runs: `data` must be a set of text shards, and every conversation file must read
    cleanly (`FILE:LINE: reason` otherwise). Paths become absolute, so a rerun from elsewhere continues."""
    from nanochat.data.chat_jsonl import chat_set_file, read_chat_file, resolve_chat_source
    from nanochat.data.corpus import _local_folder, check_data_name, open_corpus

    if data is not None:
        if chat_set_file(data) is not None:
            raise UsageError(f"--data {data}: that is a conversation set; pretraining reads text (pass it as --sft-data {data})")
        check_data_name(data)
        # no shards, or no validation shard: said now, not after the tokenizer
        open_corpus(data, "train")
        open_corpus(data, "val")
        folder = _local_folder(data)
        data = str(folder) if folder is not None and folder.name != data else data
    specs = []
    for spec in sft_add:
        src = resolve_chat_source(spec, "--sft-data")
        read_chat_file(src.path)
        where = src.name if src.path == chat_set_file(src.name) else str(src.path.resolve())
        specs.append(where + (f":{src.epochs}" if src.epochs != 1 else ""))
    return data, tuple(specs)


def _fmt_seconds(seconds: float) -> str:
    from nanochat.eval.report import fmt_seconds

    return fmt_seconds(seconds)


def _stage_seconds(state: dict, stages: list[Stage]) -> list[tuple[str, float]]:
    """(stage, wall seconds) of every finished stage, in plan order (a resumed run's earlier stages too)."""
    return [(s.name, float(state["stages"][s.name].get("seconds", 0.0))) for s in stages if s.name in state["stages"]]


def _record_speedrun_section(state: dict, stages: list[Stage]) -> None:
    """The card's Timings: every finished stage's wall time, and their sum, the run's total."""
    from nanochat.eval.report import record_section

    pairs = _stage_seconds(state, stages)
    record_section("speedrun", {"stages": [[n, s] for n, s in pairs], "total_s": sum(s for _, s in pairs)})


def _print_summary(pairs: list[tuple[str, float]], run_now: dict[str, float], report: Path) -> None:
    from nanochat.eval.report import load_sections, summary_table

    headers, rows = summary_table(load_sections())
    if rows:
        console().print(table("report card", rows, headers))
    if pairs:
        total = sum(s for _, s in pairs)
        trows = [[n, _fmt_seconds(s) + ("" if n in run_now else " (earlier)")] for n, s in pairs] + [["total", _fmt_seconds(total)]]
        console().print(table("wall time per stage", trows, ["stage", "wall clock"]))
        print0(f"speedrun done: all stages took {_fmt_seconds(total)}; the report card is {report}")
    else:
        print0(f"speedrun done; the report card is {report}")
