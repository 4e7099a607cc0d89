"""Distributed setup for one process per device: rank, world size, backend, and clean-up.

The same entry point serves a plain run (world size 1, nothing initialised), torchrun on GPUs (NCCL)
and torchrun on CPUs (gloo, which is how the tests exercise every distributed path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


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
        kwargs = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = torch.device(device)
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
