"""Pretraining batches: BOS-aligned best-fit packing of documents, with a state that resumes exactly.

`PackingLoader(corpus, tokenizer, batch_size, seq_len, ...)` is an iterator of `(inputs, targets)`,
each `(batch_size, seq_len)` int64 on the target device, cut from rows of `seq_len + 1` tokens.

Packing (per row): every document is tokenised with BOS in front. While the row has room, top the
buffer up to `buffer_size` documents and move into the row the *largest document that fits whole*;
when none fits, take the *shortest* document and crop it to fill the row exactly (its rest is
dropped). So every row starts with BOS, there is no padding, and few tokens are cropped. Ties go to
the document read first. A document longer than a row can only ever contribute its first
`seq_len + 1` tokens, so the buffer keeps just those (and its true length, which decides the choice).

Background work: a thread reads documents from `Corpus.iter_docs` (sharded across ranks by the
corpus) and tokenises them in chunks on `threads` threads, a few chunks ahead of the packer. Batches
go through pinned memory to the GPU with a non-blocking copy.

Exact resume: `state_dict()` after a batch holds the corpus position of the last document that
entered the buffer and the buffer itself (true lengths and kept tokens, in arrival order, as one
int32 tensor the checkpoint stores in safetensors). `PackingLoader(..., state=that)` rebuilds the
buffer and reads on from that position, so the batches after a resume equal, token for token, those
of a run that never stopped. Documents the thread had read ahead are simply read again.

Splitting a step: `MicroStepLoader` gives micro-step m of rank r the rows of data shard r*A + m of
N*A (N processes, A accumulation steps), so an optimizer step sees the same rows however the total
batch is split between processes and micro-steps: 1 GPU x 8 micro-steps and 8 GPUs x 1 train alike, and a
checkpoint of one split resumes in another with the same product (`regroup_states`).

The buffer is shared out: the N*A loaders hold `buffer_size` documents between them (1000, as the reference's
one loader holds), each total // (N*A) with a floor of MIN_SHARD_BUFFER. What the buffers hold decides what
is trained on: a document longer than a row never fits whole, so buffers fill up with such documents, and they
leave training only when cropped. Eight loaders of 1000 each kept 8x as many long documents out of training as
one loader of 1000 and cropped 11% of document tokens instead of 53% (measured on code text at T=2048), a
different mix of documents from the one a single loader, and the validation rows, see; eight loaders of 125
matched one of 1000 to within 0.1 points of cropping and 1% of documents read.

A data set smaller than the buffer (your own text) would fill it only by reading itself many times over
(epoch 13 at the first step of 80 documents): `buffer_for(corpus)` caps the buffer at half an epoch of
documents, so the epoch a run reports is the one it trains on.
"""

from __future__ import annotations

import bisect
import queue
import threading
from collections import deque
from typing import Any

import numpy as np

from nanochat.common.errors import NanochatError

STATE_VERSION = 1
BUFFER_SIZE = 1000  # documents buffered by all loaders of a run together
MIN_SHARD_BUFFER = 32  # documents per loader at least: below that best-fit has too little to choose from
_END = object()


def buffer_for(corpus: Any, total: int = BUFFER_SIZE) -> int:
    """The run's buffer for `corpus`: `total` documents, or half an epoch of them when it holds fewer than twice that."""
    return max(1, min(total, corpus.num_docs() // 2))


def shard_buffer_size(total: int, shards: int) -> int:
    """Documents each of `shards` loaders buffers so that together they hold about `total`."""
    return max(MIN_SHARD_BUFFER, total // max(shards, 1))


class _Buffer:
    """Documents waiting to be packed, indexed by true length; each length's docs in arrival order."""

    def __init__(self) -> None:
        self.by_len: dict[int, deque] = {}
        self.lengths: list[int] = []  # sorted distinct lengths present
        self.count = 0
        self.arrivals = 0  # arrival counter, to serialise in arrival order

    def add(self, length: int, tokens: np.ndarray, arrival: int | None = None) -> None:
        if arrival is None:
            arrival = self.arrivals
        self.arrivals = max(self.arrivals, arrival + 1)
        d = self.by_len.get(length)
        if d is None:
            d = self.by_len[length] = deque()
            bisect.insort(self.lengths, length)
        d.append((arrival, tokens))
        self.count += 1

    def _pop(self, length: int) -> tuple[int, np.ndarray]:
        d = self.by_len[length]
        _, tokens = d.popleft()
        if not d:
            del self.by_len[length]
            self.lengths.pop(bisect.bisect_left(self.lengths, length))
        self.count -= 1
        return length, tokens

    def pop_best_fit(self, room: int) -> tuple[int, np.ndarray] | None:
        """(length, tokens) of the largest doc of length <= room (the earliest of that length), or None."""
        i = bisect.bisect_right(self.lengths, room)
        return self._pop(self.lengths[i - 1]) if i else None

    def pop_shortest(self) -> tuple[int, np.ndarray]:
        return self._pop(self.lengths[0])

    def entries(self) -> list[tuple[int, int, np.ndarray]]:
        """(arrival, true length, kept tokens), in arrival order."""
        out = [(a, length, t) for length, d in self.by_len.items() for a, t in d]
        out.sort(key=lambda e: e[0])
        return out


class PackingLoader:
    """Iterator of (inputs, targets) batches of BOS-aligned best-fit packed rows; see the module doc."""

    def __init__(
        self,
        corpus: Any,
        tokenizer: Any,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
        buffer_size: int = 1000,
        threads: int = 4,
        chunk_docs: int = 128,
        prefetch_chunks: int = 4,
        state: dict | None = None,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise NanochatError(f"batch size and sequence length must be positive (got {batch_size} and {seq_len})")
        self.corpus, self.tokenizer = corpus, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.capacity = seq_len + 1
        self.rank, self.world_size = rank, world_size
        self.device = str(device)
        self.buffer_size = max(1, buffer_size)
        self.threads, self.chunk_docs, self.prefetch_chunks = threads, chunk_docs, prefetch_chunks
        self.bos = tokenizer.bos_id
        self.buffer = _Buffer()
        self.last_position: dict | None = None  # of the last document moved into the buffer
        self.docs_read = 0
        self.tokens_cropped = 0
        self.tokens_packed = 0
        if state is not None:
            self._load_state(state)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch_chunks)
        self._pending: deque = deque()
        self._thread = threading.Thread(target=self._produce, args=(self.last_position,), daemon=True, name=f"loader-rank{rank}")
        self._thread.start()

    # ---- background tokenisation ---------------------------------------------------------------

    def _produce(self, start: dict | None) -> None:
        try:
            texts: list[str] = []
            positions: list[dict] = []
            for text, position in self.corpus.iter_docs(self.rank, self.world_size, start=start):
                texts.append(text)
                positions.append(position)
                if len(texts) >= self.chunk_docs:
                    self._emit(texts, positions)
                    texts, positions = [], []
                if self._stop.is_set():
                    return
            if texts:
                self._emit(texts, positions)
            self._put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def _emit(self, texts: list[str], positions: list[dict]) -> None:
        ids = self.tokenizer.encode_batch(texts, prepend=self.bos, num_threads=self.threads)
        chunk = []
        for toks, pos in zip(ids, positions):
            chunk.append((len(toks), np.asarray(toks[: self.capacity], dtype=np.int32), pos))
        self._put(chunk)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_doc(self) -> tuple[int, np.ndarray, dict]:
        while not self._pending:
            item = self._queue.get()
            if item is _END:
                raise NanochatError(f"the {getattr(self.corpus, 'split', '')} data ran out; the corpus iterator ended")
            if isinstance(item, BaseException):
                raise item
            self._pending.extend(item)
        return self._pending.popleft()

    # ---- packing -------------------------------------------------------------------------------

    def _refill(self) -> None:
        while self.buffer.count < self.buffer_size:
            length, tokens, position = self._next_doc()
            self.buffer.add(length, tokens)
            self.last_position = position
            self.docs_read += 1

    def _pack_row(self, row: np.ndarray) -> None:
        pos = 0
        while pos < self.capacity:
            self._refill()
            room = self.capacity - pos
            found = self.buffer.pop_best_fit(room)
            if found is None:
                length, doc = self.buffer.pop_shortest()
                self.tokens_cropped += length - room
                doc = doc[:room]
            else:
                doc = found[1]
            row[pos : pos + len(doc)] = doc
            pos += len(doc)
        self.tokens_packed += self.capacity

    def next_rows(self) -> np.ndarray:
        """The next (batch_size, seq_len + 1) int32 rows, on the CPU."""
        rows = np.empty((self.batch_size, self.capacity), dtype=np.int32)
        for r in range(self.batch_size):
            self._pack_row(rows[r])
        return rows

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        rows = torch.from_numpy(self.next_rows())
        # one (2, B, T) int64 block [inputs | targets]: both halves contiguous, one host-to-device copy
        both = torch.stack([rows[:, :-1], rows[:, 1:]]).long()
        if self.device.startswith("cuda"):
            # pinned staging memory; the caching host allocator keeps it until the copy is done
            both = both.pin_memory().to(self.device, non_blocking=True)
        elif self.device != "cpu":
            both = both.to(self.device)
        return both[0], both[1]

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the loader is, after the last batch it returned (JSON plus one int32 tensor)."""
        import torch

        entries = self.buffer.entries()
        kept = [t for _, _, t in entries]
        return {
            "version": STATE_VERSION,
            "seq_len": self.seq_len,
            "rank": self.rank,
            "world_size": self.world_size,
            "position": self.last_position,
            "lengths": [length for _, length, _ in entries],
            "kept": [len(t) for t in kept],
            "tokens": torch.from_numpy(np.concatenate(kept) if kept else np.zeros(0, dtype=np.int32)),
            "docs_read": self.docs_read,
            "tokens_cropped": self.tokens_cropped,
            "tokens_packed": self.tokens_packed,
        }

    def _load_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise NanochatError(f"data-loader state version {state.get('version')} is not {STATE_VERSION}; start the run afresh (--resume never)")
        for key, mine in (("seq_len", self.seq_len), ("world_size", self.world_size), ("rank", self.rank)):
            if state[key] != mine:
                flag = {"seq_len": "--max-seq-len", "world_size": "--nproc", "rank": "--nproc"}[key]
                raise NanochatError(f"the checkpoint's data loader had {key} {state[key]}, this run has {mine}; resume with the same {flag}")
        tokens = np.asarray(state["tokens"].cpu().numpy() if hasattr(state["tokens"], "numpy") else state["tokens"], dtype=np.int32)
        offset = 0
        for i, (length, kept) in enumerate(zip(state["lengths"], state["kept"])):
            self.buffer.add(int(length), tokens[offset : offset + kept].copy(), arrival=i)
            offset += kept
        self.last_position = state["position"]
        self.docs_read = state["docs_read"]
        self.tokens_cropped = state["tokens_cropped"]
        self.tokens_packed = state["tokens_packed"]

    @property
    def epoch(self) -> int:
        return int(self.last_position["epoch"]) if self.last_position else 1

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class MicroStepLoader:
    """The batches of one process when the total batch is split over `world_size` processes and
    `accum` micro-steps: micro-step m of rank r reads data shard r*accum + m of world_size*accum.

    The rows of an optimizer step are therefore the same for any split with the same product
    (e.g. 2 processes x 1 micro-step or 1 process x 2 micro-steps), which is what makes a run on N
    GPUs comparable loss for loss with a run on one. `buffer_size` is the documents buffered by all
    world_size * accum loaders together. Iterating yields the micro-batches in order.
    """

    def __init__(self, corpus: Any, tokenizer: Any, batch_size: int, seq_len: int, *, rank: int = 0, world_size: int = 1,
                 accum: int = 1, threads: int = 4, buffer_size: int = BUFFER_SIZE, state: dict | None = None, **kwargs: Any) -> None:  # fmt: skip
        if accum < 1:
            raise NanochatError(f"gradient accumulation must be at least 1 (got {accum})")
        if state is not None and len(state.get("shards", ())) != accum:
            raise NanochatError(
                f"the checkpoint's data loader was split into {len(state.get('shards', ()))} micro-steps, this run into {accum}; "
                "resume with the same --device-batch-size, --total-batch-size and --nproc"
            )
        per_loader = max(1, threads // accum)
        self.loaders = [
            PackingLoader(corpus, tokenizer, batch_size, seq_len, rank=rank * accum + m, world_size=world_size * accum,
                          threads=per_loader, buffer_size=shard_buffer_size(buffer_size, world_size * accum),
                          state=state["shards"][m] if state else None, **kwargs)  # fmt: skip
            for m in range(accum)
        ]
        self._next = int(state["next"]) if state else 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.loaders[self._next])
        self._next = (self._next + 1) % len(self.loaders)
        return batch

    def state_dict(self) -> dict:
        return {"shards": [loader.state_dict() for loader in self.loaders], "next": self._next}

    @property
    def epoch(self) -> int:
        return min(loader.epoch for loader in self.loaders)

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()



def regroup_states(states: list[dict], rank: int, world_size: int, accum: int) -> dict:
    """The `MicroStepLoader` state of rank `rank` of `world_size` processes with `accum` micro-steps each,
    from the states the processes of a checkpoint saved (rank order) — for a resume on another number of
    processes. The data is read as processes x micro-steps streams (stream r*accum + m: micro-step m of
    rank r) whatever the split, so with the same product the streams are only dealt out anew."""
    streams = [s for state in states for s in state["shards"]]
    if len(streams) != world_size * accum:
        per = len(states[0]["shards"]) if states else 0
        raise NanochatError(
            f"the checkpoint read its data as {len(streams)} streams ({len(states)} processes x {per} micro-steps) and this run "
            f"reads {world_size * accum} ({world_size} x {accum}); resume with the same --total-batch-size and --device-batch-size "
            f"(so that processes x micro-steps stays {len(streams)}), or start afresh with --resume never"
        )
    if any(int(state.get("next", 0)) != 0 for state in states) or [s.get("rank") for s in streams] != list(range(len(streams))):
        raise NanochatError("the checkpoint's data-loader state was not saved at a step boundary; resume with the number of processes that saved it")
    return {"shards": streams[rank * accum : (rank + 1) * accum], "next": 0}
