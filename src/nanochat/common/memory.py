"""Memory pre-flight: refuse a run whose estimated peak memory is far beyond what the device has.

The estimate is the one `nanochat pretrain --dry-run` prints (train.pretrain.memory_estimate); it is
rough, so a run is refused only when it needs more than MARGIN times the device's memory: one that
might fit is left to try, one that cannot (depth 1000 on one GPU) stops at once, with the numbers and
the options that shrink it, instead of after minutes of allocating (or the kernel's OOM killer).
NANOCHAT_SKIP_MEMORY_CHECK=1 turns the check off.

NANOCHAT_GPU_MEMORY_GIB=78 makes a bigger GPU behave like a smaller one: the process may allocate at most that
much (torch.cuda.set_per_process_memory_fraction; beyond it torch raises out-of-memory as a full card would),
and every decision that reads the GPU's memory (this check, `--device-batch-size auto`) reads the cap. It is how
an 80 GB card's runs are rehearsed on a 141 GB H200.
"""

from __future__ import annotations

import os

from nanochat.common.errors import NanochatError

MARGIN = 2.0  # refuse above this many times the device's memory (the estimate errs high)
GIB = 2**30


def gpu_memory_cap(total: int) -> int | None:
    """NANOCHAT_GPU_MEMORY_GIB in bytes when it is set and below `total`, else None (a bad value is a one-line error)."""
    raw = os.environ.get("NANOCHAT_GPU_MEMORY_GIB", "").strip()
    if not raw:
        return None
    try:
        cap = float(raw)
    except ValueError:
        cap = -1.0
    if not cap > 0:
        raise NanochatError(f"NANOCHAT_GPU_MEMORY_GIB={raw!r} must be a positive number of GiB (e.g. 78); unset it to use the whole GPU")
    return int(cap * GIB) if cap * GIB < total else None


def gpu_bytes(index: int) -> int:
    """The bytes of GPU `index` this process may use: its total, or the NANOCHAT_GPU_MEMORY_GIB cap, which is then
    also applied to torch's allocator (idempotent)."""
    import torch

    total = int(torch.cuda.get_device_properties(index).total_memory)
    cap = gpu_memory_cap(total)
    if cap is None:
        return total
    torch.cuda.set_per_process_memory_fraction(cap / total, index)
    return cap


def device_memory(device: str) -> tuple[str, int] | None:
    """(what, bytes) of memory a process on `device` can use: the GPU's total memory on CUDA, the host's
    RAM on CPU (and on MPS, whose memory is the host's); None when it cannot be told."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():  # a dry run planning for a GPU this machine lacks
            return None
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        capped = " capped by NANOCHAT_GPU_MEMORY_GIB" if gpu_memory_cap(int(torch.cuda.get_device_properties(index).total_memory)) else ""
        return f"GPU {index} ({torch.cuda.get_device_name(index)}{capped})", gpu_bytes(index)
    try:
        return "host RAM", int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        return None


def over_budget(state_bytes: float, activation_bytes: float, device: str, hints: str) -> str | None:
    """The one-line refusal when the estimate exceeds MARGIN times `device`'s memory, else None; `hints`
    says what shrinks the run (e.g. "lower --device-batch-size or --depth")."""
    if os.environ.get("NANOCHAT_SKIP_MEMORY_CHECK", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    have = device_memory(device)
    if have is None:
        return None
    what, total = have
    need = state_bytes + activation_bytes
    if need <= MARGIN * total:
        return None
    return (
        f"this run needs about {need / GIB:,.1f} GiB per device ({state_bytes / GIB:,.1f} GiB weights+grads+optimizer, "
        f"{activation_bytes / GIB:,.1f} GiB activations), far more than the {total / GIB:,.1f} GiB of {what}; "
        f"{hints} (or set NANOCHAT_SKIP_MEMORY_CHECK=1 to try anyway)"
    )


def check_fits(state_bytes: float, activation_bytes: float, device: str, hints: str) -> None:
    """`over_budget` as an error: a run that cannot fit stops before it allocates anything."""
    message = over_budget(state_bytes, activation_bytes, device, hints)
    if message is not None:
        raise NanochatError(message)
