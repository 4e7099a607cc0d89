"""Bits per byte: the tokenizer-independent loss used for validation and base-model evals.

Per target token, the cross-entropy in nats counts only when the token stands for some bytes
(special tokens have 0 bytes and targets < 0 are ignored); bpb = total nats / (ln 2 * total bytes).
Over several ranks, the totals are all-reduced before dividing.

`TextBpb` is the one definition of "val bpb on N tokens" of a text corpus: pretraining's periodic
val bpb and `nanochat eval --tasks bpb` both use it, so for one checkpoint they are the same
computation on the same tokens. Its token set is the first N/T rows of T targets cut from one
contiguous, BOS-separated token stream of the split's documents (in order), the same whatever the
batch size or the number of processes: each process scores rows r, r+W, r+2W, ... of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class BpbResult:
    bpb: float
    tokens: int  # targets scored (not ignored), over every rank
    bytes: int  # the UTF-8 bytes those targets stand for


def bpb_stats(model, batches: Iterable, steps: int | None, token_bytes) -> BpbResult:
    """bpb of `model` over `steps` batches of (inputs, targets), each (B, T) int tensors.

    The model gives per-token losses (`model(x, y, loss_reduction="none")`, 0 where the target is
    ignored), so no (B, T, vocab) logits tensor is ever held: at d12 with 32 rows of 2048 that would
    be 8.6 GB of float32. token_bytes: the UTF-8 byte length of every token id (tensor or list)."""
    import torch
    import torch.distributed as dist

    total = None
    for i, (x, y) in enumerate(batches):
        if steps is not None and i >= steps:
            break
        if total is None:
            total = torch.zeros(3, dtype=torch.float64, device=y.device)
            token_bytes = torch.as_tensor(token_bytes, dtype=torch.int64, device=y.device)
        with torch.no_grad():
            loss = model(x, y, loss_reduction="none").reshape(-1)
        flat = y.reshape(-1)
        nbytes = torch.where(flat >= 0, token_bytes[flat.clamp(min=0)], torch.zeros_like(flat))
        total[0] += (loss.double() * (nbytes > 0)).sum()
        total[1] += nbytes.sum()
        total[2] += (flat >= 0).sum()
    if total is None:
        return BpbResult(float("inf"), 0, 0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    nats, nbytes, ntokens = total.tolist()
    return BpbResult(float("inf") if nbytes == 0 else nats / (math.log(2) * nbytes), int(ntokens), int(nbytes))


def evaluate_bpb(model, batches: Iterable, steps: int | None, token_bytes) -> float:
    """bpb_stats(...).bpb."""
    return bpb_stats(model, batches, steps, token_bytes).bpb


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


class TextBpb:
    """The fixed token set of "bpb on N tokens" of a text corpus split, cut once and scored many times.

    `rows = max(1, tokens // seq_len)` rows of `seq_len` targets (fewer if the split is shorter);
    row i is tokens [i*T, i*T + T] of the stream, so consecutive rows share one token and every
    token after the first is a target exactly once. `self.tokens` is the number of targets."""

    def __init__(self, tokenizer, docs: Iterable[str], tokens: int, seq_len: int, rank: int = 0, world_size: int = 1, threads: int = 4) -> None:
        import numpy as np
        import torch

        if seq_len < 1 or tokens < 1:
            raise ValueError(f"bpb needs tokens >= 1 and seq_len >= 1, got {tokens} and {seq_len}")
        want = max(1, tokens // seq_len)
        self.seq_len, self.rank, self.world_size = seq_len, rank, world_size
        self.bos = tokenizer.bos_id
        # int32 arrays, not Python lists: 80 x 2^19 val tokens would be gigabytes of Python ints
        mine: list = []
        buf = np.zeros(0, dtype=np.int32)
        n = 0
        docs_iter = iter(docs)
        while n < want:
            chunk = [t for _, t in zip(range(64), docs_iter)]  # 64 documents at a time, tokenised on threads
            if not chunk:
                break  # the split is shorter than asked: fewer rows, and `tokens` says how many
            buf = np.concatenate([buf, *(np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(chunk, prepend=self.bos, num_threads=threads))])
            rows = min(want - n, (len(buf) - 1) // seq_len)
            for i in range(rows):
                if (n + i) % world_size == rank:
                    mine.append(buf[i * seq_len : i * seq_len + seq_len + 1].copy())
            n += rows
            buf = buf[rows * seq_len :].copy()  # the last row's final token starts the next row
        self.rows = n
        self.tokens = n * seq_len
        self._mine = torch.from_numpy(np.stack(mine)) if mine else torch.zeros((0, seq_len + 1), dtype=torch.int32)

    def steps(self, batch_size: int) -> int:
        """Batches per rank: the same on every rank (the last ones padded with ignored targets)."""
        per_rank = -(-self.rows // self.world_size)
        return max(1, -(-per_rank // batch_size))

    def batches(self, batch_size: int, device) -> Iterator[tuple]:
        """This rank's rows as (inputs, targets) of exactly `batch_size` rows; padding rows are BOS
        inputs with ignored (-1) targets, so a compiled model sees one shape and they score nothing."""
        import torch

        for s in range(self.steps(batch_size)):
            part = self._mine[s * batch_size : (s + 1) * batch_size]
            x = torch.full((batch_size, self.seq_len), self.bos, dtype=torch.long)
            y = torch.full((batch_size, self.seq_len), -1, dtype=torch.long)
            x[: len(part)] = part[:, :-1].long()
            y[: len(part)] = part[:, 1:].long()
            yield x.to(device), y.to(device)

    def evaluate(self, model, batch_size: int, token_bytes, device) -> BpbResult:
        return bpb_stats(model, self.batches(batch_size, device), None, token_bytes)


def corpus_docs(corpus) -> Iterator[str]:
    """Every document of a corpus split, in order, once (the same stream on every rank)."""
    return (text for text, _ in corpus.iter_docs(rank=0, world_size=1, loop=False))
