"""HTTP plumbing shared by the generation routes: reading a request body within its size and time limits
(`read_body`), a job's server-sent events (`sse_stream` under each API's shapes, sent by `SSEResponse`,
which cancels the job when the client leaves), and a job's whole output unless the client leaves first
(`collect_unless_gone`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Callable

from starlette.requests import ClientDisconnect, Request

from nanochat.serve import guard
from nanochat.serve.validation import MAX_BODY_BYTES, ApiError
from nanochat.serve.workers import Job

BODY_TIMEOUT_S = 30.0
DRAIN_LIMIT = guard.DRAIN_BYTES  # read (and drop) an oversized body up to this, so the client sees the 413


def sse_data(obj) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def sse_error(message: str) -> bytes:
    """The events that end a stream whose generation failed: an OpenAI error envelope, then [DONE]."""
    return sse_data(ApiError(500, message, code="generation_failed").body()) + b"data: [DONE]\n\n"


async def sse_stream(job: Job, render: Callable[[tuple], list[bytes]]):
    """A job's server-sent events: `render(event)` gives the chunks of each event (an API's own shapes), then
    `data: [DONE]` after the "done" event; a failed generation ends with an error envelope, a cancelled one
    (the client left) with nothing more."""
    while True:
        ev = await job.events.get()
        if ev[0] == "error":
            yield sse_error(ev[1])
            return
        if ev[0] == "cancelled":
            return
        for chunk in render(ev):
            yield chunk
        if ev[0] == "done":
            yield b"data: [DONE]\n\n"
            return


async def read_body(request: Request) -> bytes:
    """The request's body; 408 when it does not arrive within BODY_TIMEOUT_S (a client that trickles
    its body, slowloris, does not hold the connection forever), 413 when it is too big."""
    try:
        return await asyncio.wait_for(_read_body(request), timeout=BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s", code="request_timeout") from None


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                if size > DRAIN_LIMIT:
                    break
                continue  # keep draining, keep nothing
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection while sending the request", code="client_disconnected") from None
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is more than {MAX_BODY_BYTES} bytes", code="body_too_large")
    return b"".join(chunks)


async def wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse:
    """Server-sent events for one job; a disconnect (seen by a parallel receive) cancels the job."""

    def __init__(self, job: Job, chunks):
        self.job, self.chunks = job, chunks

    async def __call__(self, scope, receive, send):
        job = self.job
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

        async def watch():
            await wait_disconnect(receive)
            job.cancel.set()
            job.events.put_nowait(("cancelled",))

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for payload in self.chunks:
                if job.cancel.is_set():
                    break
                await send({"type": "http.response.body", "body": payload, "more_body": True})
            if not job.cancel.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            job.cancel.set()  # no-op when finished; stops the worker when we leave early
            watcher.cancel()


@dataclass
class Collected:
    texts: list[list[str]]
    entries: list[list[dict]]
    finish: list[str | None]
    prompt_entries: list[dict]
    usage: dict | None = None
    error: str | None = None


async def collect(job: Job, n: int) -> Collected:
    """Every event of a job, until it is done or fails."""
    out = Collected([[] for _ in range(n)], [[] for _ in range(n)], [None] * n, [])
    while True:
        ev = await job.events.get()
        if ev[0] == "delta":
            out.texts[ev[1]].append(ev[2])
            out.entries[ev[1]].extend(ev[3] if len(ev) > 3 else ())
        elif ev[0] == "finish":
            out.finish[ev[1]] = ev[2]
        elif ev[0] == "prompt_logprobs":
            out.prompt_entries = ev[1]
        elif ev[0] == "done":
            out.usage = ev[1]
            return out
        elif ev[0] == "error":
            out.error = ev[1]
            return out
        else:  # cancelled
            return out


async def collect_unless_gone(request: Request, job: Job, n: int) -> Collected | None:
    """All of a job's output, or None when the client disconnects first (the job is then cancelled);
    a failed generation is a 500."""
    collector = asyncio.create_task(collect(job, n))
    watcher = asyncio.create_task(wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
            job.cancel.set()
    if collector not in done:
        return None
    got = collector.result()
    if got.error is not None:
        raise ApiError(500, got.error, code="generation_failed")
    return got
