"""Restarting a command under torchrun: one process per GPU, on one machine or on several.

`plan_relaunch` is a pure function (tested on CPU); `maybe_relaunch` applies it and replaces the
current process with torchrun (through `nanochat.common.torchrun`, torchrun's own launcher with
nanochat's one-line errors), so exit codes and signals pass straight through.

One machine: `torchrun --standalone --nproc_per_node=N`. Several (`--nnodes N`): every machine runs
the same command with its own `--node-rank`; torchrun's c10d rendezvous at `--rdzv-endpoint HOST:PORT`
(node 0's address; node 0 hosts the rendezvous) gathers them under `--rdzv-id`, and numbers the
processes 0..world-1. Under SLURM's `srun` the machine count, node rank and job id come from
`SLURM_*` when not given, and MASTER_ADDR/MASTER_PORT stand in for a missing `--rdzv-endpoint`.
Already under torchrun, or one of `srun`'s tasks per GPU (`common.dist.slurm_worker_env`), the
command runs where it is.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from nanochat.common.errors import NanochatError, UsageError

# the commands that may run on several processes
DISTRIBUTED_COMMANDS = ("pretrain", "sft", "rl", "eval")
# options of ours that mean nothing to a worker (and that torchrun's parser would mistake for its own)
LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id")
DEFAULT_RDZV_ID = "nanochat"
DEFAULT_MASTER_PORT = 29500
_RDZV_ID = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class NodeOptions:
    """The several-machines options of a command (None: not given)."""

    nnodes: int | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None


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


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT ([v6::addr]:PORT for IPv6), or a UsageError saying the form."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", endpoint.strip())
    port = int(m.group(2) or m.group(4)) if m else 0
    if not m or not 1 <= port <= 65535:
        raise UsageError(f"--rdzv-endpoint {endpoint!r} must be HOST:PORT, node 0's address and a free port on it, e.g. 10.0.0.1:29500")
    return (m.group(1) or m.group(3)), port


def slurm_launcher_step(env: Mapping[str, str]) -> bool:
    """True inside an `srun` step of one task per machine on several machines (each task a node's launcher)."""
    try:
        tasks, nodes = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_STEP_NUM_NODES"])
    except (KeyError, ValueError):
        return False
    return nodes > 1 and tasks == nodes


def resolve_nodes(opts: NodeOptions, env: Mapping[str, str]) -> NodeOptions:
    """The options with SLURM's and MASTER_ADDR's defaults filled in, checked (UsageError on a bad one)."""
    if slurm_launcher_step(env):
        opts = replace(
            opts,
            nnodes=opts.nnodes if opts.nnodes is not None else int(env["SLURM_STEP_NUM_NODES"]),
            node_rank=opts.node_rank if opts.node_rank is not None else int(env.get("SLURM_NODEID", "0")),
            rdzv_id=opts.rdzv_id if opts.rdzv_id is not None else env.get("SLURM_JOB_ID"),
        )
    nnodes = 1 if opts.nnodes is None else opts.nnodes
    if nnodes < 1:
        raise UsageError(f"--nnodes {nnodes} is not a machine count; use --nnodes 1 or more")
    if nnodes == 1:
        given = [flag for flag, v in (("--node-rank", opts.node_rank), ("--rdzv-endpoint", opts.rdzv_endpoint), ("--rdzv-id", opts.rdzv_id)) if v is not None]
        if given and not (given == ["--node-rank"] and opts.node_rank == 0):
            raise UsageError(f"{given[0]} is for training on several machines; add --nnodes N (2 or more), or drop {given[0]}")
        return NodeOptions(1, 0, None, None)
    if opts.node_rank is not None and not 0 <= opts.node_rank < nnodes:
        raise UsageError(f"--node-rank {opts.node_rank} is outside 0..{nnodes - 1} (--nnodes {nnodes}); number the machines 0 to {nnodes - 1}")
    endpoint = opts.rdzv_endpoint
    if endpoint is None and env.get("MASTER_ADDR"):
        endpoint = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT') or DEFAULT_MASTER_PORT}"
    if endpoint is None:
        raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, node 0's address (e.g. --rdzv-endpoint node0:29500), the same on every machine")
    split_endpoint(endpoint)
    rdzv_id = opts.rdzv_id if opts.rdzv_id is not None else DEFAULT_RDZV_ID
    if not _RDZV_ID.fullmatch(rdzv_id):
        raise UsageError(f"--rdzv-id {rdzv_id!r} must be letters, digits, '.', '_' or '-' (the same on every machine), e.g. --rdzv-id run42")
    return NodeOptions(nnodes, opts.node_rank, endpoint, rdzv_id)


def plan_relaunch(
    argv: Sequence[str],
    env: Mapping[str, str],
    gpu_count: int,
    nproc: int | None,
    device: str = "auto",
    nodes: NodeOptions | None = None,
) -> list[str] | None:
    """The torchrun command to run instead of this process, or None to run here.

    argv is the nanochat argument list (without the program name). On one machine we relaunch when
    not already under torchrun and either `nproc` > 1 was asked for, or nproc is unset, the device
    may be CUDA and more than one GPU is visible; `--nproc 1` runs here. With `--nnodes` 2 or more we
    always relaunch: `--nproc` (default: every visible GPU, or 1 without GPUs) processes on this
    machine join the rendezvous."""
    from nanochat.common.dist import slurm_worker_env, under_torchrun

    if under_torchrun(env) or slurm_worker_env(env) is not None:  # already one of the workers
        return None
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc {nproc} is not a process count; use --nproc 1 or more")
    nodes = resolve_nodes(nodes or NodeOptions(), env)
    cuda = device in ("auto", "cuda")
    if nproc is not None and cuda and gpu_count > 0 and nproc > gpu_count:
        raise NanochatError(f"--nproc {nproc} but only {gpu_count} GPUs are visible; use --nproc {gpu_count} or fewer")
    workers = ["-m", "nanochat", *strip_launch_options(argv)]
    if nodes.nnodes > 1:
        n = nproc if nproc is not None else (gpu_count if cuda and gpu_count > 0 else 1)
        cmd = ["torchrun", f"--nnodes={nodes.nnodes}", f"--nproc_per_node={n}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint={nodes.rdzv_endpoint}", f"--rdzv-id={nodes.rdzv_id}"]  # fmt: skip
        if nodes.node_rank is not None:
            # c10d numbers the processes itself; the node rank says who hosts the rendezvous store: node 0
            cmd.append(f"--rdzv-conf=is_host={int(nodes.node_rank == 0)}")
        return cmd + workers
    if nproc is None:
        if not cuda or gpu_count <= 1:
            return None
        n = gpu_count
    else:
        n = nproc
        if n == 1:
            return None
    return ["torchrun", "--standalone", f"--nproc_per_node={n}", *workers]


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc N`, `--nnodes N`, `--node-rank N`, `--rdzv-endpoint E`, `--rdzv-id I`
    (also in their `--opt=value` forms): the workers read all that from torchrun's environment, and
    torchrun's own parser would take e.g. `--nproc` for an abbreviation of its `--nproc-per-node`."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            out.append(a)
    return out


def is_local_address(host: str) -> bool:
    """Whether `host` names this machine: it resolves to an address a socket here can bind."""
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def maybe_relaunch(nproc: int | None, device: str = "auto", argv: Sequence[str] | None = None, nodes: NodeOptions | None = None) -> None:
    """Replace this process by torchrun when `plan_relaunch` says so; otherwise return.

    One of `srun`'s tasks per GPU gets torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE) from SLURM's first."""
    from nanochat.common.dist import slurm_worker_env

    worker_env = slurm_worker_env(os.environ)
    if worker_env is not None:
        os.environ.update(worker_env)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    plan = plan_relaunch(argv, os.environ, visible_gpu_count() if device in ("auto", "cuda") else 0, nproc, device, nodes)
    if plan is None:
        return
    resolved = resolve_nodes(nodes or NodeOptions(), os.environ)
    if resolved.node_rank == 0 and resolved.rdzv_endpoint:
        host, _ = split_endpoint(resolved.rdzv_endpoint)
        if not is_local_address(host):
            raise NanochatError(f"--node-rank 0 hosts the rendezvous, but --rdzv-endpoint host {host!r} is not this machine; "
                                "run node 0 on that machine, or point --rdzv-endpoint at this one")  # fmt: skip
    from nanochat.common.logging import print0

    print0(f"[dim]relaunching under torchrun:[/dim] {shlex.join(plan)}")
    sys.stdout.flush()
    sys.stderr.flush()
    # torchrun's launcher in this interpreter (no PATH lookup), behind nanochat's error convention
    exec_argv = [sys.executable, "-m", "nanochat.common.torchrun", *plan[1:]]
    os.execv(sys.executable, exec_argv)
