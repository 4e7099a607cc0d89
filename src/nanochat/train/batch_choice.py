"""The device batch chosen for the GPU: the most rows per micro-step that fit its memory with headroom.

`--device-batch-size auto` (pretrain's default) measures, before step 0, what one row of activations costs on
this GPU (one eager forward and backward of a small batch; a compiled step keeps no more than that) and picks
the largest row count that
  - divides the rows each process trains on per optimizer step (the total batch is kept: more rows per
    micro-step means fewer gradient-accumulation micro-steps, never a different batch), and
  - keeps weights, gradients, optimizer state and activations within HEADROOM of the device's memory.
Off the GPU there is nothing to measure and the default of 32 rows stands. An explicit `--device-batch-size`
always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.common.errors import NanochatError

HEADROOM = 0.85  # share of the device's memory a run plans to use: the allocator's fragmentation and NCCL need the rest
DEFAULT_ROWS = 32  # off the GPU, and the most rows a chosen batch starts from (the reference's default)
MAX_ROWS = 128


@dataclass(frozen=True)
class BatchChoice:
    device_batch_size: int
    reason: str


def choose_device_batch(rows_per_process: int, state_bytes: float, bytes_per_row: float, device_bytes: float,
                        headroom: float = HEADROOM, max_rows: int = MAX_ROWS, source: str = "measured") -> BatchChoice:
    """The largest divisor b of `rows_per_process` (b <= max_rows) with state + b x bytes_per_row <= headroom x memory."""
    budget = headroom * device_bytes - state_bytes
    gib = 2**30
    if budget < bytes_per_row:
        raise NanochatError(
            f"one row of activations ({bytes_per_row / gib:.2f} GiB) does not fit beside the weights, gradients and "
            f"optimizer state ({state_bytes / gib:.1f} GiB) in {headroom:.0%} of {device_bytes / gib:.0f} GiB; pass "
            "--activation-checkpointing, a smaller --depth or --max-seq-len, or train on more GPUs"
        )
    fits = int(budget // bytes_per_row)
    rows = max(b for b in range(1, min(max_rows, rows_per_process) + 1) if rows_per_process % b == 0 and b <= fits)
    why = (f"{rows} rows: {bytes_per_row / gib:.3f} GiB of activations a row ({source}), {state_bytes / gib:.1f} GiB of "
           f"state, {headroom:.0%} of {device_bytes / gib:.0f} GiB allows {fits} rows; the largest divisor of the "
           f"{rows_per_process} rows each process trains on per step")  # fmt: skip
    return BatchChoice(rows, why)


def measure_row_bytes(model, seq_len: int, device: str, rows: int = 2) -> float:
    """Peak bytes one row of `seq_len` tokens adds in an eager forward and backward on CUDA (gradients left out)."""
    import torch

    vocab = model.config.vocab_size
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    idx = torch.randint(0, vocab, (rows, seq_len), device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model(idx, idx).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model.zero_grad(set_to_none=True)
    del idx
    torch.cuda.empty_cache()
    return max(1.0, (peak - before - grad_bytes) / rows)
