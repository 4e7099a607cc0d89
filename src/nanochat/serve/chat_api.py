"""`POST /v1/chat/completions` answers: a worker job's events as OpenAI's chat completion body
(`chat_body`) or as its server-sent events (`sse_chunks`: a role chunk per choice, content deltas as text
becomes final, a finish chunk per choice, the usage with `stream_options.include_usage`, `data: [DONE]`).
With `log_requests` the reply is logged (the request is logged by the route)."""

from __future__ import annotations

import logging

from nanochat.serve.outputs import chat_logprobs
from nanochat.serve.responses import Collected, sse_data, sse_stream
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
    reply: list[str] = []

    def render(ev: tuple) -> list[bytes]:
        if ev[0] == "delta":
            if log_requests and ev[1] == 0:
                reply.append(ev[2])
            return [_chunk(rid, created, model, [{"index": ev[1], "delta": {"content": ev[2]}, "logprobs": _logprobs(req, ev[3]), "finish_reason": None}])]
        if ev[0] == "finish":
            return [_chunk(rid, created, model, [{"index": ev[1], "delta": {}, "logprobs": None, "finish_reason": ev[2]}])]
        if ev[0] == "done":
            if log_requests:
                log.info("reply %s: %s", rid, "".join(reply))
            return [_chunk(rid, created, model, [], usage=ev[1])] if req.include_usage else []
        return []

    async for chunk in sse_stream(job, render):
        yield chunk


def chat_body(rid: str, created: int, model: str, req: ChatRequest, got: Collected, log_requests: bool) -> dict:
    texts = ["".join(t) for t in got.texts]
    if log_requests:
        log.info("reply %s: %s", rid, texts[0])
    choices = [
        {"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": _logprobs(req, got.entries[i]), "finish_reason": got.finish[i] or "length"}
        for i in range(req.n)
    ]
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices, "usage": got.usage}
