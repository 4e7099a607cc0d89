"""Distributed setup for one process per device: rank, world size, backend, clean-up, and the checks
that keep a run on several machines honest.

The same entry point serves a plain run (world size 1, nothing initialised), torchrun on GPUs (NCCL)
and torchrun on CPUs (gloo, which is how the tests exercise every distributed path), on one machine
or several. `srun` tasks started one per GPU get torchrun's variables from SLURM's (`slurm_worker_env`).

- `distributed(device_type)`: set up, run, tear down; a collective that fails because another process
  died becomes one `NanochatError` line saying so (not a gloo/NCCL traceback).
- `agree(what, fn)`: run `fn` on every rank and check that every rank got the same summary (data
  shards, tokenizer): a machine with missing or different files fails before step 0, on every rank.
- `check_shared_dir(folder)`: every rank must see the folder rank 0 writes (checkpoints).
- `NANOCHAT_DIST_TIMEOUT` (seconds): how long a collective may wait before it fails (torch's default
  otherwise); what ends the survivors when a machine vanishes without closing its connections.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nanochat.common.errors import NanochatError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: str  # "cuda:3", "cpu", "mps"
    backend: str | None  # "nccl" | "gloo" | None when not distributed

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


class SameOnEveryRank(NanochatError):
    """An error every rank raises alike (an `agree` or `check_shared_dir` failure): printed once per machine."""


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def slurm_worker_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """torchrun's variables for a task of an `srun` step that runs one task per GPU (more tasks than
    machines), from SLURM's; None when this is no such task (or torchrun's variables are there already).

    Rendezvous is env:// at MASTER_ADDR:MASTER_PORT (29500 by default), which the batch script exports."""
    if under_torchrun(env):
        return None
    try:
        tasks, nodes = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_STEP_NUM_NODES"])
        rank, local_rank = int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"])
    except (KeyError, ValueError):
        return None
    if tasks <= 1 or tasks == nodes:  # one task per machine: that task launches torchrun (common.launch)
        return None
    if not env.get("MASTER_ADDR"):
        raise NanochatError(
            f"srun started {tasks} tasks but MASTER_ADDR is not set; in the batch script, "
            'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) before srun'
        )
    return {
        "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(tasks), "GROUP_RANK": env.get("SLURM_NODEID", "0"),
        "MASTER_ADDR": env["MASTER_ADDR"], "MASTER_PORT": env.get("MASTER_PORT") or "29500",
    }  # fmt: skip


def _timeout():
    value = os.environ.get("NANOCHAT_DIST_TIMEOUT", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise NanochatError(f"NANOCHAT_DIST_TIMEOUT={value!r} is not a number of seconds; set e.g. NANOCHAT_DIST_TIMEOUT=600 or unset it") from None
    from datetime import timedelta

    return timedelta(seconds=seconds)


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the process group when launched by torchrun; a no-op for a single process."""
    import torch

    if not under_torchrun():
        device = "cuda:0" if device_type == "cuda" else device_type
        if device_type == "cuda":
            torch.cuda.set_device(0)
        return DistInfo(0, 0, 1, device, None)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = device_type, "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = torch.device(device)
        timeout = _timeout()
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(**kwargs)
    return DistInfo(rank, local_rank, world_size, device, backend)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# a peer that died


# how gloo and NCCL word a collective that failed because another process went away (or never answered)
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused", "connection was likely closed",
              "timed out", "timeout", "remote process exited", "communicator was aborted")  # fmt: skip


def is_peer_loss(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another process went away (or timed out); a local NCCL or
    CUDA error is not one."""
    try:
        import torch.distributed as dist

        if isinstance(e, (dist.DistNetworkError, dist.DistStoreError)):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _PEER_LOST)


def peer_loss_message(e: BaseException, rank: int, hint: str) -> str:
    """One line: which rank lost contact, torch's reason (its first sentence, without the source path), what to do."""
    import re

    reason = " ".join(str(e).split())
    reason = re.sub(r"^\[[^\]]*\.(?:cpp|cc|hpp|h):\d+\]\s*", "", reason)
    reason = re.split(r"(?<=[.!])\s", reason, maxsplit=1)[0].rstrip(".")[:160]
    return f"rank {rank} on {socket.gethostname()} lost contact with the other processes ({reason}): a process or machine of this run stopped, its own log says why; {hint}"


RESTART_HINT = "start the same command again on every machine (--resume auto, the default, continues from the newest checkpoint)"


@contextmanager
def distributed(device_type: str, hint: str = RESTART_HINT) -> Iterator[DistInfo]:
    """This process's DistInfo for the body of a `with`; the process group is always torn down.

    A collective failing because another process died is re-raised as one NanochatError line; a
    `SameOnEveryRank` error is printed by each machine's local rank 0 only (the others exit quietly)."""
    info = init_distributed(device_type)
    try:
        yield info
    except SameOnEveryRank as e:
        if info.local_rank != 0:
            raise SystemExit(e.exit_code) from None
        raise
    except Exception as e:
        if info.is_distributed and is_peer_loss(e):
            raise NanochatError(peer_loss_message(e, info.rank, hint)) from e
        raise
    finally:
        try:
            cleanup()
        except Exception:  # a group whose peers are gone may fail to tear down; the process ends anyway
            pass


# ---------------------------------------------------------------------------------------------
# agreement between ranks


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (just [obj] without a process group). Small picklable things only."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(what: str, fn: Callable[[], tuple[T, dict[str, str]]], fix: str) -> T:
    """Run `fn` (returning (result, summary)) on every rank; return the result when every rank's summary
    equals rank 0's. Otherwise raise, on every rank alike, one line naming the first rank that differs
    (or that failed: its error), its machine, and `fix`.

    A summary maps names to short descriptions that must agree (e.g. "train shards": "5 shards,
    12,345 bytes, sha256 ..."); machine-specific details (a folder path) belong in the error text of fn."""
    result: Any = None
    try:
        result, summary = fn()
        mine = {"summary": summary, "error": None}
    except NanochatError as e:
        mine = {"summary": None, "error": str(e)}
    if not _initialized():
        if mine["error"] is not None:
            raise NanochatError(mine["error"])
        return result
    import torch.distributed as dist

    mine.update(rank=dist.get_rank(), host=socket.gethostname())
    views = all_gather_objects(mine)
    failed = [v for v in views if v["error"] is not None]
    if failed:
        v = failed[0]
        raise SameOnEveryRank(f"rank {v['rank']} on {v['host']}: {v['error']}")
    ref = views[0]
    for v in views[1:]:
        for key, value in ref["summary"].items():
            other = v["summary"].get(key)
            if other != value:
                raise SameOnEveryRank(f"{what} differ between processes: {key} on rank {v['rank']} ({v['host']}) are {other}, "
                                      f"on rank 0 ({ref['host']}) {value}; {fix}")  # fmt: skip
    return result


def check_shared_dir(directory: Path, what: str = "checkpoints") -> None:
    """Fail (on every rank alike) unless every rank sees the files rank 0 writes into `directory`.

    Every rank writes its optimizer shard into the checkpoint folder rank 0 creates: on machines that do
    not share that folder the first save would fail hours into the run. A no-op for one process."""
    if not _initialized():
        return
    import secrets

    import torch.distributed as dist

    rank = dist.get_rank()
    token = all_gather_objects(secrets.token_hex(8) if rank == 0 else None)[0]
    probe = Path(directory) / f".tmp-shared-check-{token}"
    if rank == 0:
        from nanochat.common.atomic import atomic_write_text

        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(probe, token)
    barrier()
    seen = False
    for _ in range(5):  # a network filesystem may show a new file a moment late
        try:
            seen = probe.read_text() == token
        except OSError:
            seen = False
        if seen:
            break
        time.sleep(0.25)
    views = all_gather_objects((rank, socket.gethostname(), seen))
    if rank == 0:
        probe.unlink(missing_ok=True)
    blind = [(r, h) for r, h, s in views if not s]
    if blind:
        hosts = sorted({h for _, h in blind})
        raise SameOnEveryRank(
            f"rank {blind[0][0]} on {', '.join(hosts)} does not see {directory}, the {what} folder rank 0 on {views[0][1]} writes; "
            f"every machine must share it: put NANOCHAT_HOME (or its checkpoints/ folder, e.g. as a symlink) on a filesystem all machines mount"
        )
