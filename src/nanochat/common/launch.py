"""Restarting a command under torchrun, one process per GPU.

`plan_relaunch` is a pure function (tested on CPU); `maybe_relaunch` applies it and replaces the
current process with torchrun, so exit codes and signals pass straight through.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from nanochat.common.errors import NanochatError, UsageError

# the commands that may run on several processes
DISTRIBUTED_COMMANDS = ("pretrain", "sft", "rl", "eval")


def visible_gpu_count(env: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use (torch honours CUDA_VISIBLE_DEVICES)."""
    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def plan_relaunch(
    argv: Sequence[str],
    env: Mapping[str, str],
    gpu_count: int,
    nproc: int | None,
    device: str = "auto",
) -> list[str] | None:
    """The torchrun command to run instead of this process, or None to run here.

    argv is the nanochat argument list (without the program name). We relaunch when not already
    under torchrun and either `nproc` > 1 was asked for, or nproc is unset, the device may be CUDA
    and more than one GPU is visible. `--nproc 1` always runs here.
    """
    if "RANK" in env and "WORLD_SIZE" in env:  # already one of torchrun's workers
        return None
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc {nproc} is not a process count; use --nproc 1 or more")
    if nproc is None:
        if device not in ("auto", "cuda") or gpu_count <= 1:
            return None
        n = gpu_count
    else:
        n = nproc
        if n == 1:
            return None
        if device in ("auto", "cuda") and gpu_count > 0 and n > gpu_count:
            raise NanochatError(f"--nproc {n} but only {gpu_count} GPUs are visible; use --nproc {gpu_count} or fewer")
    return ["torchrun", "--standalone", f"--nproc_per_node={n}", "-m", "nanochat", *strip_nproc(argv)]


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc N` / `--nproc=N`: the workers don't need it, and torchrun's own parser
    would take `--nproc` for an abbreviation of its `--nproc-per-node` and fail."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def maybe_relaunch(nproc: int | None, device: str = "auto", argv: Sequence[str] | None = None) -> None:
    """Replace this process by torchrun when `plan_relaunch` says so; otherwise return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    plan = plan_relaunch(argv, os.environ, visible_gpu_count() if device in ("auto", "cuda") else 0, nproc, device)
    if plan is None:
        return
    from nanochat.common.logging import print0

    print0(f"[dim]relaunching under torchrun:[/dim] {shlex.join(plan)}")
    sys.stdout.flush()
    sys.stderr.flush()
    # torchrun as a module of this interpreter: the same environment, no PATH lookup
    exec_argv = [sys.executable, "-m", "torch.distributed.run", *plan[1:]]
    os.execv(sys.executable, exec_argv)
