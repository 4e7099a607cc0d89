"""Engine workers: one thread per model replica (one per GPU, one on CPU) fed by a bounded queue.

Generation runs in these threads, never on the event loop, so `/health` and the other routes stay
fast while the model works. A request becomes a `Job`; `WorkerPool.submit` puts it in the queue or
raises `QueueFull` when the queue is at its bound (the server answers 503 with Retry-After). The
worker streams events back to the job's asyncio queue: `("delta", choice, text, logprob_entries)` as text
becomes final (serve/outputs.py: never half a character or a possible stop sequence; the entries are empty
unless log-probabilities were asked for), `("finish", choice, reason)`, and finally `("done", usage)` or
`("error", message)`; with `prompt_logprobs`, `("prompt_logprobs", entries)` comes first.
Setting `job.cancel` (client gone) stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nanochat.serve.outputs import ChoiceOutput, TokenNames, token_entries


class QueueFull(Exception):
    """Every worker is busy and the waiting queue is at its bound."""


@dataclass
class GenParams:
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    n: int = 1
    stop: tuple[str, ...] = ()  # stop sequences: the answer ends before the first one
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k best alternatives
    prompt_logprobs: bool = False  # also the prompt's tokens (echo), as ("prompt_logprobs", entries) before any delta
    repetition_penalty: float = 1.0  # the repetition guards (engine/repetition.py); off unless the request sets them
    no_repeat_ngram: int = 0
    frequency_penalty: float = 0.0  # OpenAI's additive penalties, apart from the two above
    presence_penalty: float = 0.0


@dataclass
class Job:
    prompt_ids: list[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    tokens_generated: int = 0  # read by tests and metrics; written by the worker thread only

    def emit(self, *event: Any) -> None:
        """Thread-safe: hand one event to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
            self.cancel.set()


WORKER_NICENESS = 10


def _lower_this_threads_priority() -> None:
    """Give the calling thread a lower CPU priority than the event loop's.

    On Linux a thread's niceness is its own (setpriority on the thread id), so when the CPUs are
    busy the kernel runs the event loop first: /health and new connections stay fast while the
    model works. Raising one's niceness needs no privilege; where it is unsupported, nothing changes.
    """
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
    except (AttributeError, OSError):
        pass


class Worker(threading.Thread):
    """Runs jobs from the pool's queue on one engine, one job at a time."""

    def __init__(self, pool: "WorkerPool", engine, index: int):
        super().__init__(name=f"nanochat-engine-{index}", daemon=True)
        self.pool, self.engine, self.index = pool, engine, index
        self.busy = False

    def run(self) -> None:
        _lower_this_threads_priority()
        device = getattr(self.engine, "device", None)
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.set_device(device)  # this thread's kernels and CUDA graphs go to its own GPU
        while True:
            job = self.pool._queue.get()
            if job is None:
                return
            if job.cancel.is_set():  # its client left while it waited
                self.pool._on_job_done(job)
                continue
            self.busy = True
            try:
                self._run(job)
            except Exception as e:  # an engine failure fails this request, never the worker
                job.emit("error", f"generation failed: {type(e).__name__}: {e}")
            finally:
                self.busy = False
                self.pool._on_job_done(job)

    def _run(self, job: Job) -> None:
        p = job.params
        tok = self.engine.tokenizer
        terminal = {tok.special_id("<|assistant_end|>"), tok.bos_id}
        names = TokenNames(tok)
        outputs = [ChoiceOutput(tok, p.stop, p.logprobs, names) for _ in range(p.n)]
        counts = [0] * p.n
        finished = [False] * p.n
        steps = 0
        if p.prompt_logprobs:
            job.emit("prompt_logprobs", token_entries(self.engine.model, job.prompt_ids, names, p.logprobs or 0))
        rows = []  # the latest step's log-softmax, when log-probabilities are asked for
        extra = {}
        if p.logprobs is not None:
            import torch

            extra["on_logits"] = lambda logits: rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        gen = self.engine.generate(
            job.prompt_ids, num_samples=p.n, max_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed,
            repetition_penalty=p.repetition_penalty, no_repeat_ngram=p.no_repeat_ngram,
            frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty, **extra,
        )
        try:
            for column, _masks in gen:
                if job.cancel.is_set():
                    return
                steps += 1
                self.pool.metrics_tokens(finished.count(False))
                step_rows = rows.pop() if rows else None
                rows.clear()
                for i, t in enumerate(column):
                    if finished[i]:
                        continue
                    counts[i] += 1
                    if t in terminal:
                        finished[i] = True
                        text, entries = outputs[i].finish()
                        if text or entries:
                            job.emit("delta", i, text, entries)
                        job.emit("finish", i, "stop")
                        continue
                    text, entries, stopped = outputs[i].push(t, step_rows[i] if step_rows is not None else None)
                    if text or entries:
                        job.emit("delta", i, text, entries)
                    if stopped:
                        finished[i] = True
                        job.emit("finish", i, "stop")
                job.tokens_generated = steps
                if all(finished):
                    break
        finally:
            gen.close()
        if job.cancel.is_set():
            return
        for i in range(p.n):
            if not finished[i]:
                text, entries = outputs[i].finish()
                if text or entries:
                    job.emit("delta", i, text, entries)
                job.emit("finish", i, "length")
        job.emit("done", {"prompt_tokens": len(job.prompt_ids), "completion_tokens": sum(counts), "total_tokens": len(job.prompt_ids) + sum(counts)})


class WorkerPool:
    """Worker threads over engines, with a waiting queue of at most `queue_size` jobs."""

    def __init__(self, engines: list, queue_size: int = 16, on_tokens: Callable[[int], None] | None = None):
        if not engines:
            raise ValueError("a worker pool needs at least one engine")
        self.engines = engines
        self.queue_size = queue_size
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._on_tokens = on_tokens
        self.workers = [Worker(self, e, i) for i, e in enumerate(engines)]
        for w in self.workers:
            w.start()

    def metrics_tokens(self, n: int) -> None:
        if self._on_tokens is not None and n:
            self._on_tokens(n)

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.busy)

    @property
    def waiting(self) -> int:
        with self._lock:
            return max(0, self._waiting - self.busy)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull when len(workers) + queue_size jobs are already in."""
        with self._lock:
            if self._waiting >= len(self.workers) + self.queue_size:
                raise QueueFull()
            self._waiting += 1
        self._queue.put(job)

    def _on_job_done(self, job: Job) -> None:
        with self._lock:
            self._waiting -= 1

    def shutdown(self) -> None:
        for _ in self.workers:
            self._queue.put(None)
