"""What the training loops (pretrain, sft, rl) share: progress lines, the metrics file, the stop signal,
the non-finite-loss guard, val bits-per-byte and greedy samples.

- `Progress`: one line per step on rank 0 — a rich progress bar on a terminal, plain lines otherwise.
- `MetricsLog`: `metrics.jsonl` in the run folder, one JSON object per line (rank 0); on resume it is
  cut back to the steps before the checkpoint so a resumed run's file reads like an uninterrupted one.
- `StopSignal`: SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and
  exits 0. A second signal stops at once.
- `forward_backward`: gradient accumulation over micro-batches.
- `sync_step_stats`: one all-reduce per step carrying the loss and the stop flag, so every rank skips
  a non-finite step, and stops, together.
- `greedy_samples`: a few greedy continuations of fixed prompts, to read during training.
- `peak_memory`: the run's peak memory (GPU allocations on CUDA, resident set elsewhere), for the done line.
- `wandb_run`: the wandb run `--run NAME` asks for (rank 0), or None: `--run dummy`, other ranks, or
  wandb not installed (a warning; metrics.jsonl has everything anyway). sft and rl hand it to their
  `MetricsLog`, which copies every record's numbers to it.
- `TrainingRun` and `Stage`: the run skeleton of every stage. `TrainingRun.run(stage)` walks the steps:
  at the top of each step the stage's evaluations (once per step, also when a skipped step repeats it),
  a checkpoint when due (the cadence, the last step, a stop signal), then one optimizer step timed by
  the clock, the non-finite-loss guard, the progress line and the metrics record; it always tears the
  progress bar, the signal handlers and the metrics file down. A stage supplies only what is its own.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanochat.common.logging import console, is_rank0

SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "It is a truth universally acknowledged, that",
    "My dear Emma,",
    "If 5*x + 3 = 13, then x is",
]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def peak_memory(device_type: str) -> tuple[str, float] | None:
    """(what, GiB): the most the torch caching allocator held for tensors on CUDA since the process started, or the
    process's peak resident set elsewhere (Linux and macOS report it in different units)."""
    if device_type == "cuda":
        import torch

        return "peak GPU memory", torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "peak RSS", rss / (2**30 if sys.platform == "darwin" else 2**20)


class Progress:
    """Per-step progress on rank 0: a rich bar on a TTY, one plain line per step otherwise."""

    def __init__(self, total: int, start: int = 0, enabled: bool | None = None, tty: bool | None = None) -> None:
        self.enabled = is_rank0() if enabled is None else enabled
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._bar = None
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=console(), transient=False)
            self._task = self._bar.add_task("", total=total, completed=start)
            self._bar.start()

    def step(self, line: str, completed: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, description=line)
        else:
            print(line, flush=True)

    def note(self, line: str) -> None:
        """A line that stays (evals, samples, saves)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class MetricsLog:
    """Append-only JSON lines (rank 0), flushed per record; each record's numbers also go to `wandb`
    (a wandb run, as `KIND/KEY`, with its step) when one is given, and closing finishes that run."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool | None = None, wandb=None) -> None:
        self.path = Path(path)
        self.enabled = is_rank0() if enabled is None else enabled
        self.wandb = wandb
        self._f = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if resume_step is None:
                self.path.unlink()
            else:
                self._truncate(resume_step)
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate(self, step: int) -> None:
        """Keep the records of steps before `step` (a killed run may have logged past its checkpoint)."""
        from nanochat.common.atomic import atomic_write_text

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if rec.get("step", -1) < step or (rec.get("step") == step and rec.get("kind") in ("eval", "chatcore")):
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()
        if self.wandb is not None:
            kind = record.get("kind", "metrics")
            numbers = {f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}
            self.wandb.log({"step": record.get("step"), **numbers})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file (lines cut short by a crash are skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class StopSignal:
    """SIGTERM/SIGINT → `requested` becomes True; a second signal restores the default and re-raises."""

    def __init__(self) -> None:
        self.requested = False
        self.signame = ""
        self._old: dict[int, Any] = {}

    def install(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signame = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def forward_backward(model, batches, micro_steps: int, device):
    """Accumulate in `.grad` the gradient of the mean loss over `micro_steps` batches; returns the
    summed loss as a tensor (no host sync, so the GPU keeps its queue full)."""
    import torch

    loss_sum = torch.zeros((), device=device)
    for _ in range(micro_steps):
        x, y = next(batches)
        loss = model(x, y)
        loss_sum += loss.detach()
        (loss / micro_steps).backward()
    return loss_sum


def sync_step_stats(loss_sum, micro_steps: int, stop: bool, world_size: int) -> tuple[float, bool]:
    """(mean loss over micro-steps and ranks, any rank asked to stop) with one all-reduce.

    A non-finite loss on any rank makes the mean non-finite everywhere, so all ranks skip together."""
    import torch

    stats = torch.stack([loss_sum.detach().float().reshape(()), torch.tensor(float(stop), device=loss_sum.device)])
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    loss, stops = stats.tolist()
    return loss / (micro_steps * world_size), stops > 0


def greedy_samples(model, tokenizer, prompts: list[str] = SAMPLE_PROMPTS, max_tokens: int = 16, device: str = "cpu") -> list[str]:
    """Greedy continuations (full recompute per token: short and rare, so no KV cache needed)."""
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer.encode(prompt, prepend=tokenizer.bos_id)
            x = torch.tensor([ids], dtype=torch.long, device=device)
            for _ in range(max_tokens):
                logits = model(x[:, -model.config.sequence_len :])
                x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            out.append(prompt + tokenizer.decode(x[0, len(ids) :].tolist()))
    return out


class StepClock:
    """Wall time per step; the first `warmup` steps (compilation) are left out of the training time, and the first
    step's own time is kept apart (`first_step_s`: what compiling costs this run)."""

    def __init__(self, warmup: int = 10, total: float = 0.0) -> None:
        self.warmup = warmup
        self.total = total
        self.timed_steps = 0
        self.first_step_s: float | None = None  # this process's first step: compilation (and warm-up) included
        self._t0 = 0.0

    def start(self, device_type: str) -> None:
        _sync(device_type)
        self._t0 = time.perf_counter()

    def stop(self, device_type: str, step_index: int) -> float:
        _sync(device_type)
        dt = time.perf_counter() - self._t0
        if self.first_step_s is None:
            self.first_step_s = dt
        if step_index >= self.warmup:
            self.total += dt
            self.timed_steps += 1
        return dt

    def describe(self) -> str:
        """The done line's "training time ..." phrase; a run of warm-up steps only has no steady-state time."""
        if self.timed_steps == 0:
            return f"training time not measured (every step was one of the first {self.warmup}, left out as warm-up)"
        return f"training time {format_duration(self.total)}"

    def eta(self, steps_left: int, last_dt: float) -> float:
        per = self.total / self.timed_steps if self.timed_steps else last_dt
        return per * steps_left


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def run_distributed(device_preference: str, body) -> Any:
    """Set up this process (a torchrun rank or a single process), run `body(device_type, dist_info)`,
    and always tear the process group down, also when training fails (another process dying ends
    this one with a one-line error, see `common.dist.distributed`)."""
    from nanochat.common.device import detect_device
    from nanochat.common.dist import distributed

    device_type = detect_device(device_preference)
    with distributed(device_type) as info:
        if device_type == "cuda":  # NANOCHAT_GPU_MEMORY_GIB caps the allocator before anything is allocated
            import torch

            from nanochat.common.memory import gpu_bytes

            gpu_bytes(torch.device(info.device).index or 0)
        return body(device_type, info)


def record_report(name: str, data: dict, series: dict | None = None, title: str | None = None) -> None:
    """Record a stage's report section; failing to write it warns and never stops a finished run."""
    from nanochat.common.errors import NanochatError
    from nanochat.common.logging import warn0
    from nanochat.eval.report import record_section

    try:
        record_section(name, data, series=series, title=title)
    except NanochatError as e:
        warn0(f"could not record the report section: {e}")



def wandb_run(run: str, rank: int, project: str, config: dict):
    """A started wandb run for `--run NAME` on rank 0, else None (see the module docstring)."""
    if run == "dummy" or rank != 0:
        return None
    try:
        import wandb
    except ImportError:
        from nanochat.common.logging import warn0

        warn0(f"--run {run} asks for wandb, which is not installed (pip install wandb); logging to metrics.jsonl only")
        return None
    return wandb.init(project=project, name=run, config=config)


# ------------------------------------------------------------------------------------------------
# the run skeleton


@dataclass
class StepResult:
    """One step's forward/backward as every rank agreed on it."""

    loss: float
    stop: bool  # a stop signal reached some rank


class Stage:
    """What a training stage supplies to `TrainingRun.run`. The skeleton calls, per step:
    `is_last`, `evaluate` (once per step value), `save` (when due), then `forward_backward`, `update`
    (after a finite loss) and `record`; `discard` after a non-finite loss when `max_bad_steps` > 0."""

    max_bad_steps = 0  # > 0: a non-finite loss skips the step (it repeats); that many in a row stop the run
    bad_steps_fix = ""  # the end of that error: what to do

    def is_last(self, step: int) -> bool:
        raise NotImplementedError

    def evaluate(self, step: int, last: bool) -> None:
        """Evaluations and samples at the top of `step` (the state after `step` updates)."""

    def save(self, step: int) -> None:
        raise NotImplementedError

    def forward_backward(self, step: int, stop_requested: bool) -> StepResult:
        raise NotImplementedError

    def discard(self) -> None:
        """Forget the gradient of a skipped step."""

    def update(self, step: int, loss: float) -> None:
        raise NotImplementedError

    def record(self, step: int, dt: float, loss: float) -> tuple[str, dict]:
        """The progress line and the metrics record of the step just taken (`step` counts it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the stage holds (loaders, threads) when the run ends, also by an error."""


class TrainingRun:
    """The loop, its clock, progress, metrics file, stop signal and checkpoint writing, for any stage."""

    def __init__(self, command: str, run_dir: Path, total: int, start_step: int, resumed: bool, *, rank: int, world: int,
                 device_type: str, save_every: int, keep_last: int | None, loop_state: dict, clock_warmup: int, wandb=None) -> None:
        self.command, self.run_dir, self.rank, self.world = command, Path(run_dir), rank, world
        self.device_type, self.save_every, self.keep_last = device_type, save_every, keep_last
        self.start_step = self.step = start_step
        self.resumed = resumed
        master = rank == 0
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=start_step if resumed else None, enabled=master, wandb=wandb)
        self.stop = StopSignal()
        self.clock = StepClock(warmup=clock_warmup, total=loop_state.get("total_training_time", 0.0))
        self.progress = Progress(total, start_step, enabled=master)
        self.stopped_by_signal = False
        self.t_start = time.time()

    def note(self, line: str) -> None:
        self.progress.note(line)

    def checkpoint(self, step: int, model, optimizer, meta: dict | None, rank_state: dict) -> None:
        """Save `step` (weights and meta from rank 0, optimizer shard and `rank_state` from every rank)."""
        from nanochat.common import checkpoint as ck

        t0 = time.time()
        path = ck.save_checkpoint(self.run_dir, step, model_state=model.state_dict() if self.rank == 0 else None, meta=meta,
                                  optimizer_state=optimizer.state_dict(), rank_state=rank_state, rank=self.rank, world_size=self.world,
                                  keep_last=self.keep_last)  # fmt: skip
        self.note(f"saved step {step} to {path} ({time.time() - t0:.1f}s)")

    def run(self, stage: Stage) -> None:
        """Train from `start_step` until the stage's last step or a stop signal (a checkpoint is saved either way)."""
        self.stop.install()
        try:
            self._loop(stage)
        finally:
            self.progress.close()
            self.stop.uninstall()
            stage.close()
            self.metrics.close()

    def _loop(self, stage: Stage) -> None:
        stop_synced = False  # the stop request as all ranks agreed on it
        top_done_for = -1
        bad_in_row = 0
        while True:
            step = self.step
            last = stage.is_last(step)
            top = top_done_for != step
            top_done_for = step
            if top:
                stage.evaluate(step, last)
            due = top and self.save_every > 0 and step % self.save_every == 0
            if step != self.start_step and (last or stop_synced or due):  # a run resumed at its end has nothing new
                stage.save(step)
            if last or stop_synced:
                self.stopped_by_signal = stop_synced and not last
                return
            self.clock.start(self.device_type)
            result = stage.forward_backward(step, self.stop.requested)
            stop_synced = result.stop
            if stage.max_bad_steps > 0 and not math.isfinite(result.loss):
                stage.discard()  # parameters and optimizer state untouched
                bad_in_row += 1
                self.clock.stop(self.device_type, 0)
                self.note(f"step {step:05d} | loss {result.loss} is not finite: step skipped ({bad_in_row}/{stage.max_bad_steps})")
                self.metrics.write({"kind": "skip", "step": step, "loss": str(result.loss)})
                if bad_in_row >= stage.max_bad_steps:
                    from nanochat.common.errors import NanochatError

                    raise NanochatError(f"{bad_in_row} steps in a row had a non-finite loss at step {step}; {stage.bad_steps_fix}")
                continue
            bad_in_row = 0
            stage.update(step, result.loss)
            dt = self.clock.stop(self.device_type, step - self.start_step)
            self.step = step + 1
            line, record = stage.record(self.step, dt, result.loss)
            if self.device_type == "cuda":
                import torch

                record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.progress.step(line, self.step)
            self.metrics.write(record)

    def peak_note(self, summary: dict) -> str:
        """", peak GPU memory 12.3 GiB" for the done line, also put in `summary` (peak_memory_gib); "" where unknown."""
        peak = peak_memory(self.device_type)
        if peak is None:
            return ""
        summary["peak_memory_gib"] = round(peak[1], 2)
        return f", {peak[0]} {peak[1]:.1f} GiB"

    def stopped_line(self) -> str:
        """What rank 0 prints when a signal stopped the run."""
        return f"{self.stop.signame}: saved step {self.step} and stopped; `nanochat {self.command} ... --resume auto` continues"
