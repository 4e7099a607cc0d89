"""Bits per byte: the tokenizer-independent loss used for validation and base-model evals.

Per target token, the cross-entropy in nats counts only when the token stands for some bytes
(special tokens have 0 bytes and targets < 0 are ignored); bpb = total nats / (ln 2 * total bytes).
Over several ranks, the two totals are all-reduced before dividing.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator


def evaluate_bpb(model, batches: Iterable, steps: int | None, token_bytes) -> float:
    """bpb of `model` over `steps` batches of (inputs, targets), each (B, T) int tensors.

    token_bytes: a 1-D int tensor (or list) with the UTF-8 byte length of every token id."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    total_nats = None
    total_bytes = None
    for i, (x, y) in enumerate(batches):
        if steps is not None and i >= steps:
            break
        if not torch.is_tensor(token_bytes) or token_bytes.device != y.device:
            token_bytes = torch.as_tensor(token_bytes, dtype=torch.int64, device=y.device)
        if total_nats is None:
            total_nats = torch.zeros((), dtype=torch.float64, device=y.device)
            total_bytes = torch.zeros((), dtype=torch.int64, device=y.device)
        with torch.no_grad():
            logits = model(x).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="none")
        flat = y.reshape(-1)
        valid = flat >= 0
        nbytes = torch.where(valid, token_bytes[flat.clamp(min=0)], torch.zeros_like(flat))
        total_nats += (loss.double() * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    if total_nats is None:
        return float("inf")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats, op=dist.ReduceOp.SUM)
        dist.all_reduce(total_bytes, op=dist.ReduceOp.SUM)
    b = int(total_bytes.item())
    return float("inf") if b == 0 else total_nats.item() / (math.log(2) * b)


def token_stream_batches(tokenizer, docs: Iterator[str], batch_size: int, seq_len: int, device) -> Iterator[tuple]:
    """(inputs, targets) batches cut from one stream of documents, each prefixed with BOS.

    A plain contiguous stream (no packing tricks), so every token of the documents is scored once."""
    import torch

    need = batch_size * seq_len + 1
    buf: list[int] = []
    for text in docs:
        buf.extend(tokenizer.encode(text, prepend=tokenizer.bos_id))
        while len(buf) >= need:
            chunk = torch.tensor(buf[:need], dtype=torch.long)
            buf = buf[need - 1 :]
            x = chunk[:-1].view(batch_size, seq_len).to(device)
            y = chunk[1:].view(batch_size, seq_len).to(device)
            yield x, y
