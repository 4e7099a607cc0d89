"""A tiny all-reduce through `common.dist`, to prove a multi-process setup works end to end."""

from __future__ import annotations

from nanochat.common.device import detect_device
from nanochat.common.dist import distributed
from nanochat.common.errors import NanochatError
from nanochat.common.logging import print0


def run_all_reduce_check(device_preference: str = "auto") -> int:
    import torch
    import torch.distributed as dist

    device_type = detect_device(device_preference)
    with distributed(device_type, hint="start it again on every machine") as info:
        value = torch.tensor([float(info.rank + 1)], device=info.device)
        if info.is_distributed:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        expected = info.world_size * (info.world_size + 1) / 2
        if value.item() != expected:
            raise NanochatError(f"all-reduce gave {value.item()} instead of {expected}; check the network between ranks")
        print0(f"all-reduce ok: world size {info.world_size}, backend {info.backend or 'none'}, sum {int(value.item())}")
        return int(value.item())
