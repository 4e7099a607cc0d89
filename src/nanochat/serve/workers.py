"""Engine workers: one thread per model replica (one per GPU, one on CPU) fed by a bounded queue.

Generation runs in these threads, never on the event loop, so `/health` and the other routes stay
fast while the model works. A request becomes a `Job`; `WorkerPool.submit` puts it in the queue or
raises `QueueFull` when the queue is at its bound (the server answers 503 with Retry-After). The
worker runs the job as an `engine.reply.Reply` (the chat path `nanochat chat` uses too) and hands its
events to the job's asyncio queue as they come: `("delta", choice, text, logprob_entries)`,
`("finish", choice, reason)`, and finally `("done", usage)`; with `prompt_logprobs`,
`("prompt_logprobs", entries)` first; `("error", message)` when the engine fails.
Setting `job.cancel` (client gone) stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nanochat.engine.reply import Reply, ReplyParams


class QueueFull(Exception):
    """Every worker is busy and the waiting queue is at its bound."""


@dataclass
class Job:
    prompt_ids: list[int]
    params: ReplyParams
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
        def on_step(steps: int, running: int) -> None:
            self.pool.metrics_tokens(running)
            job.tokens_generated = steps

        reply = Reply(self.engine, job.prompt_ids, job.params, should_stop=job.cancel.is_set, on_step=on_step)
        for event in reply.events():
            job.emit(*event)


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
