"""`POST /v1/chat/completions` answers: a worker job's events as OpenAI's chat completion body
(`chat_body`) or as its server-sent events (`sse_chunks`: a role chunk per choice, content deltas as text
becomes final, a finish chunk per choice, the usage with `stream_options.include_usage`, `data: [DONE]`).
With `log_requests` the reply is logged (the request is logged by the route)."""

from __future__ import annotations

import json
import logging

from nanochat.serve.outputs import chat_logprobs
from nanochat.serve.responses import Collected, sse_data, sse_error
from nanochat.serve.validation import ChatRequest
from nanochat.serve.workers import Job

log = logging.getLogger("nanochat.serve")


def _chunk(rid: str, created: int, model: str, choices: list, usage=None) -> bytes:
    obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return sse_data(obj)


def _logprobs(req: ChatRequest, entries: list[dict]) -> dict | None:
    return {"content": chat_logprobs(entries), "refusal": None} if req.top_logprobs is not None else None


async def sse_chunks(job: Job, rid: str, created: int, model: str, req: ChatRequest, log_requests: bool):
    for i in range(req.n):
        yield _chunk(rid, created, model, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    reply = [] if log_requests else None
    while True:
        ev = await job.events.get()
        kind = ev[0]
        if kind == "delta":
            if reply is not None and ev[1] == 0:
                reply.append(ev[2])
            yield _chunk(rid, created, model, [{"index": ev[1], "delta": {"content": ev[2]}, "logprobs": _logprobs(req, ev[3]), "finish_reason": None}])
        elif kind == "finish":
            yield _chunk(rid, created, model, [{"index": ev[1], "delta": {}, "logprobs": None, "finish_reason": ev[2]}])
        elif kind == "done":
            if req.include_usage:
                yield _chunk(rid, created, model, [], usage=ev[1])
            if reply is not None:
                log.info("reply %s: %s", rid, "".join(reply))
            yield b"data: [DONE]\n\n"
            return
        elif kind == "error":
            yield sse_error(ev[1])
            return
        else:  # cancelled
            return


def chat_body(rid: str, created: int, model: str, req: ChatRequest, got: Collected, log_requests: bool) -> dict:
    texts = ["".join(t) for t in got.texts]
    if log_requests:
        log.info("reply %s: %s", rid, texts[0])
    choices = [
        {"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": _logprobs(req, got.entries[i]), "finish_reason": got.finish[i] or "length"}
        for i in range(req.n)
    ]
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices, "usage": got.usage}
