"""Engine workers: one thread per model replica (one per GPU, one on CPU), each driving a continuous
decode batch (engine/batcher.py), fed by one bounded queue.

Generation runs in these threads, never on the event loop, so `/health` and the other routes stay
fast while the model works. A request becomes a `Job`; `WorkerPool.submit` puts it in the queue or
raises `QueueFull` when every slot is taken and `queue_size` jobs already wait (the server answers 503
with Retry-After). Between two decode steps a worker admits waiting jobs, in order, into its batch's free
slots (a job takes one slot per choice, `n`); a job leaves at the step that ends it (finish, stop
sequence, max_tokens, or its client gone), so other requests keep decoding while jobs come and go.
Each job is an `engine.reply.Reply` (the chat path `nanochat chat` uses too) driven step by step, and its
events go to the job's asyncio queue as they come: `("delta", choice, text, logprob_entries)`,
`("finish", choice, reason)`, and finally `("done", usage)`; with `prompt_logprobs`,
`("prompt_logprobs", entries)` first; `("error", message)` when the engine fails.
Setting `job.cancel` (client gone) drops the job at the next token. An engine without `decode_batch`
(a test double that only generates) runs one job at a time through `SerialBatch`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nanochat.engine.reply import Reply, ReplyParams

DEFAULT_SLOTS_CPU = 8  # a CPU decode step costs about its rows' matmuls: more rows mostly slow every user
DEFAULT_SLOTS_CUDA = 32  # a GPU step at small batch costs about the weights' read: rows are nearly free


def default_batch_slots(device) -> int:
    """The decode batch's slots when --batch-slots is not given: 32 on CUDA, 8 elsewhere."""
    return DEFAULT_SLOTS_CUDA if getattr(device, "type", str(device)) == "cuda" else DEFAULT_SLOTS_CPU


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
    """Drives one engine's decode batch: admits queued jobs into free slots between steps (module docstring)."""

    def __init__(self, pool: "WorkerPool", engine, index: int, slots: int):
        super().__init__(name=f"nanochat-engine-{index}", daemon=True)
        self.pool, self.engine, self.index = pool, engine, index
        self.slots = slots if hasattr(engine, "decode_batch") else 1
        self.batch = None  # made in the worker's own thread (on its GPU)
        self.active = 0  # jobs in the batch now
        self._pending: Job | None = None  # taken from the queue, waiting for enough free slots
        self._stopping = False
        self.ready = threading.Event()  # set once the batch exists (and its CUDA graphs are captured)
        self.error: Exception | None = None  # why the batch could not be made

    @property
    def busy(self) -> bool:
        return self.active > 0

    def _new_batch(self):
        from nanochat.engine.batcher import SerialBatch

        return self.engine.decode_batch(self.slots) if hasattr(self.engine, "decode_batch") else SerialBatch(self.engine)

    def run(self) -> None:
        _lower_this_threads_priority()
        device = getattr(self.engine, "device", None)
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.set_device(device)  # this thread's kernels go to its own GPU
        try:
            self.batch = self._new_batch()
            getattr(self.batch, "warm_up", lambda: None)()
        except Exception as e:  # the pool reports it: the server then says the model failed to load
            self.error = e
            return
        finally:
            self.ready.set()
        while True:
            self._admit()
            if self.batch.entries:
                self._step()
            elif self._stopping:
                return

    def _admit(self) -> None:
        """Move queued jobs into free slots, in order; wait for one when the batch is idle."""
        while not self._stopping:
            job = self._pending
            if job is None:
                try:
                    job = self.pool._queue.get(block=not self.batch.entries)
                except queue.Empty:
                    return
                if job is None:  # shutdown
                    self._stopping = True
                    return
            self._pending = None
            if job.cancel.is_set():  # its client left while it waited
                self.pool._on_job_done(job)
                continue
            if job.params.n > self.batch.free and self.batch.entries:
                self._pending = job  # it waits for enough rows to free up; later jobs wait behind it
                return
            self._start(job)

    def _start(self, job: Job) -> None:
        def on_step(steps: int, running: int) -> None:
            self.pool.metrics_tokens(running)
            job.tokens_generated = steps

        reply = Reply(self.engine, job.prompt_ids, job.params, should_stop=job.cancel.is_set, on_step=on_step)
        self.active += 1
        try:
            for event in reply.opening():
                job.emit(*event)
            entry = self.batch.join(job.prompt_ids, tag=(job, reply), **reply.generation_kwargs())
        except Exception as e:  # a request the engine refuses fails alone
            self._fail(job, e)
            return
        if entry.ended:  # no room to generate: the reply ends at once
            self._end(entry)

    def _step(self) -> None:
        try:
            results = self.batch.step()
        except Exception as e:  # the batch's state is unknown now: fail its jobs, start a fresh one
            for entry in list(self.batch.entries):
                self._fail(entry.tag[0], e)
            self.batch = self._new_batch()
            return
        for entry, column in results:
            job, reply = entry.tag
            try:
                if job.cancel.is_set():  # the client left: no more events
                    self._end(entry)
                    continue
                if column is not None:
                    for event in reply.advance(column):
                        job.emit(*event)
                if column is None or entry.ended or all(reply.finished):
                    self._end(entry)
            except Exception as e:
                self.batch.leave(entry)
                self._fail(job, e)

    def _end(self, entry) -> None:
        """The entry leaves the batch; its reply's last events unless the client has gone."""
        self.batch.leave(entry)
        job, reply = entry.tag
        if not job.cancel.is_set():
            for event in reply.ending():
                job.emit(*event)
        self.active -= 1
        self.pool._on_job_done(job)

    def _fail(self, job: Job, e: Exception) -> None:
        job.emit("error", f"generation failed: {type(e).__name__}: {e}")
        self.active -= 1
        self.pool._on_job_done(job)


class WorkerPool:
    """Worker threads over engines, `slots` decode rows each, with at most `queue_size` jobs waiting."""

    def __init__(self, engines: list, queue_size: int = 16, on_tokens: Callable[[int], None] | None = None, slots: int = DEFAULT_SLOTS_CPU):
        if not engines:
            raise ValueError("a worker pool needs at least one engine")
        if slots < 1:
            raise ValueError(f"a worker needs at least 1 batch slot (got {slots})")
        self.engines = engines
        self.queue_size = queue_size
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # jobs submitted and not done yet (running or queued)
        self._on_tokens = on_tokens
        self.workers = [Worker(self, e, i, slots) for i, e in enumerate(engines)]
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.ready.wait()
            if w.error is not None:
                self.shutdown()
                raise RuntimeError(f"worker {w.index} could not make its decode batch of {slots} slots: {type(w.error).__name__}: {w.error}") from w.error

    def metrics_tokens(self, n: int) -> None:
        if self._on_tokens is not None and n:
            self._on_tokens(n)

    @property
    def slots(self) -> int:
        """Decode rows over all workers: how many one-choice jobs run at once."""
        return sum(w.slots for w in self.workers)

    @property
    def max_n(self) -> int:
        """The most choices one job can have: one worker's slots."""
        return max(w.slots for w in self.workers)

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.busy)

    @property
    def running(self) -> int:
        return sum(w.active for w in self.workers)

    @property
    def waiting(self) -> int:
        with self._lock:
            return max(0, self._waiting - self.running)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull when slots + queue_size jobs are already in."""
        with self._lock:
            if self._waiting >= self.slots + self.queue_size:
                raise QueueFull()
            self._waiting += 1
        self._queue.put(job)

    def _on_job_done(self, job: Job) -> None:
        with self._lock:
            self._waiting -= 1

    def shutdown(self) -> None:
        for _ in self.workers:
            self._queue.put(None)
