"""The HTTP server: an OpenAI-compatible chat API, health and metrics, and the chat page (starlette).

Routes
    GET  /                      the chat page (serve/static/index.html, self-contained)
    GET  /health                200 {"status": "ok"} when the model is loaded, 503 while it loads
    GET  /metrics               Prometheus text: requests, tokens, latency, queue
    GET  /v1/models             the one model served
    POST /v1/chat/completions   OpenAI chat completions, streaming (SSE, ends with `data: [DONE]`) or not,
                                with `stop` sequences and `logprobs`/`top_logprobs`
    POST /v1/completions        OpenAI text completions (serve/completions.py): text or token-id prompts,
                                `echo`, `logprobs` with alternatives, `stop`, streaming

Sampling penalties (both endpoints): OpenAI's `frequency_penalty` and `presence_penalty` (additive, -2 to 2,
default 0) as OpenAI defines them, and nanochat's repetition guards `repetition_penalty` (multiplicative,
1 to 10) and `no_repeat_ngram_size` (0 or 2 to 64), which are separate fields, never derived from the
OpenAI ones. Chat completions default the guards to the server's `--repetition-penalty` /
`--no-repeat-ngram` (on, as in `nanochat chat`: a small model loops); text completions default them to
off, so a raw completion is the model's own. Log-probabilities are always the model's, before any penalty.

Safety, in the order a request meets it: `guard.ConnectionGuard` (deadlines on every connection, a
well-formed Host, no cross-site browser requests unless --allow-origin), then `access.Guard`: the Host header must be allowed (DNS rebinding),
the API key must match when one is set (Bearer, or HTTP Basic with the key as password so that a
browser can open the page; constant-time compare; /health is exempt), a body over 1 MB is refused
with 413, a POST body that is not `application/json` with 415. Then `validation.parse_chat_request` turns any malformed body into a 400/413/422 JSON error, and a
`model` other than the served name (or the generic `nanochat`) gets 404. Every answer carries `usage`.
Generation runs on worker threads (`workers.WorkerPool`), each decoding up to `--batch-slots` requests in
one continuous batch (requests join and leave between tokens); when every slot is taken and the bounded
queue is full the answer is 503 with Retry-After. A client that disconnects cancels its job, which stops at the next token.
Every error, whatever the route, is an OpenAI error envelope `{"error": {"message", "type", ...}}`.
Conversations are never logged unless `log_requests` is set.

The routes are module-level handlers that find the server's state in `request.app.state`: `nanochat`
(ServerState: status, worker pool, model facts), `config` (ServeConfig), `metrics` and `page`. What a
route does beyond HTTP lives elsewhere: generation in engine/reply.py (through serve/workers.py), the
request checks in validation.py / completions.py, the response shapes in chat_api.py / completions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nanochat.common.errors import NanochatError
from nanochat.engine.prompt import render_chat_prompt
from nanochat.engine.reply import ReplyParams
from nanochat.serve import chat_api, guard
from nanochat.serve import completions as completions_api
from nanochat.serve.access import Guard, error_response
from nanochat.serve.config import ServeConfig, check_bind  # noqa: F401  (check_bind: imported from here by the serve command)
from nanochat.serve.metrics import Metrics
from nanochat.serve.responses import SSEResponse, collect_unless_gone, read_body
from nanochat.serve.validation import ApiError, check_model, parse_chat_request
from nanochat.serve.workers import Job, QueueFull, WorkerPool, default_batch_slots

log = logging.getLogger("nanochat.serve")

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class ServerState:
    status: str = "loading"  # loading | ready | failed
    error: str | None = None
    pool: WorkerPool | None = None
    context_len: int = 0
    vocab_size: int = 0
    tokenizer: object = None
    created: int = field(default_factory=lambda: int(time.time()))


def _load_engines(state: ServerState, config: ServeConfig, metrics: Metrics, load: Callable[[], list]) -> None:
    """Run `load()` and start the workers on its engines; on failure the server stays up and /health says why."""
    # generation threads hold the GIL for Python-level work between kernels; short switch slices
    # let the event loop thread take it back quickly, so /health stays fast while they generate
    sys.setswitchinterval(0.0005)
    try:
        engines = load()
        e0 = engines[0]
        state.context_len = e0.sequence_len
        state.tokenizer = e0.tokenizer
        state.vocab_size = e0.tokenizer.vocab_size
        slots = config.batch_slots or default_batch_slots(getattr(e0, "device", "cpu"))
        state.pool = WorkerPool(engines, queue_size=config.queue_size, on_tokens=metrics.add_tokens, slots=slots)
        state.status = "ready"
        log.info("model ready: %d worker(s) of %d batch slots, context %d", len(engines), slots, state.context_len)
    except Exception as e:
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        log.error("loading the model failed: %s", state.error)


def _ready_pool(state: ServerState) -> WorkerPool:
    if state.status == "ready":
        return state.pool
    if state.status == "failed":
        raise ApiError(503, f"the model failed to load: {state.error}", code="model_failed")
    raise ApiError(503, "the model is still loading; retry shortly", code="model_loading", headers={"Retry-After": "5"})


def _submit(request: Request, prompt_ids: list[int], params: ReplyParams) -> Job:
    """Queue a generation job for this request (the model is ready); 503 with Retry-After when the queue is full."""
    app = request.app.state
    if params.n > app.nanochat.pool.max_n:
        raise ApiError(400, f"n={params.n} choices need more than this server's {app.nanochat.pool.max_n} batch slots; ask for fewer (or serve with more --batch-slots)", param="n", code="unsupported_parameter")
    job = Job(prompt_ids, params, loop=asyncio.get_running_loop())
    try:
        app.nanochat.pool.submit(job)
    except QueueFull:
        app.metrics.rejected_busy += 1
        raise ApiError(503, "all workers are busy and the queue is full; retry shortly", code="server_busy", headers={"Retry-After": str(app.config.retry_after_s)}) from None
    app.metrics.prompt_tokens += len(prompt_ids)
    return job


async def page(request: Request) -> Response:
    return Response(request.app.state.page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


async def health(request: Request) -> Response:
    state, config = request.app.state.nanochat, request.app.state.config
    pool = state.pool
    body = {"status": "ok" if state.status == "ready" else state.status, "ready": state.status == "ready", "model": config.model_name}
    if pool is not None:
        body.update(workers=len(pool.workers), slots=pool.slots, running=pool.running, busy=pool.busy, waiting=pool.waiting, context_len=state.context_len)
    if state.error:
        body["error"] = state.error
    return JSONResponse(body, status_code=200 if state.status == "ready" else 503, headers={"Cache-Control": "no-store"})


async def metrics_route(request: Request) -> Response:
    return Response(request.app.state.metrics.render(request.app.state.nanochat), media_type="text/plain; version=0.0.4; charset=utf-8")


async def models(request: Request) -> Response:
    state, config = request.app.state.nanochat, request.app.state.config
    return JSONResponse({"object": "list", "data": [{"id": config.model_name, "object": "model", "created": state.created, "owned_by": "nanochat"}]})


async def chat_completions(request: Request) -> Response:
    state, config = request.app.state.nanochat, request.app.state.config
    _ready_pool(state)
    body = await read_body(request)
    req = parse_chat_request(body, context_len=state.context_len, vocab_size=state.vocab_size, default_max_tokens=config.default_max_tokens,
                             default_repetition_penalty=config.repetition_penalty, default_no_repeat_ngram=config.no_repeat_ngram)  # fmt: skip
    check_model(req.model, config.model_name)
    try:
        prompt = render_chat_prompt(state.tokenizer, req.messages, state.context_len - req.max_tokens)
    except NanochatError as e:
        raise ApiError(422, str(e), param="messages", code="invalid_messages") from None
    params = ReplyParams(req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.n, stop=tuple(req.stop), logprobs=req.top_logprobs,
                         repetition_penalty=req.repetition_penalty, no_repeat_ngram=req.no_repeat_ngram,
                         frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty)  # fmt: skip
    job = _submit(request, prompt, params)
    rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    if config.log_requests:
        log.info("request %s: %s", rid, json.dumps(req.messages, ensure_ascii=False))
    if req.stream:
        return SSEResponse(job, chat_api.sse_chunks(job, rid, created, config.model_name, req, log_requests=config.log_requests))
    got = await collect_unless_gone(request, job, req.n)
    if got is None:  # the client left; nobody will read this
        return Response(status_code=499)
    return JSONResponse(chat_api.chat_body(rid, created, config.model_name, req, got, log_requests=config.log_requests))


async def completions(request: Request) -> Response:
    state, config = request.app.state.nanochat, request.app.state.config
    _ready_pool(state)
    body = await read_body(request)
    req = completions_api.parse_completion_request(body, tokenizer=state.tokenizer, context_len=state.context_len, vocab_size=state.vocab_size)
    check_model(req.model, config.model_name)
    params = ReplyParams(
        req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.n,
        stop=tuple(req.stop), logprobs=req.logprobs, prompt_logprobs=req.echo and req.logprobs is not None,
        repetition_penalty=req.repetition_penalty, no_repeat_ngram=req.no_repeat_ngram,
        frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
    )  # fmt: skip
    job = _submit(request, req.prompt_ids, params)
    rid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
    if req.stream:
        return SSEResponse(job, completions_api.sse_chunks(job, rid, created, config.model_name, req))
    got = await collect_unless_gone(request, job, req.n)
    if got is None:  # the client left; nobody will read this
        return Response(status_code=499)
    return JSONResponse(completions_api.completion_body(rid, created, config.model_name, req, got))


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    msg = {404: "no such route; see GET /v1/models, POST /v1/chat/completions and POST /v1/completions", 405: f"method {request.method} is not allowed here"}
    return error_response(ApiError(exc.status_code, msg.get(exc.status_code, str(exc.detail)), code="http_error", headers=dict(exc.headers or {})))


async def on_api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc)


async def on_crash(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error")
    return error_response(ApiError(500, "internal server error", code="internal_error"))


ROUTES = [
    Route("/", page, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics_route, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]


def create_app(config: ServeConfig, load: Callable[[], list]) -> Starlette:
    """The ASGI app. `load()` returns the engines (one per worker); it runs in a thread at startup,
    and /health answers 503 until it returns. Tests pass a `load` that returns in-memory engines."""
    state, metrics = ServerState(), Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=_load_engines, args=(state, config, metrics, load), name="nanochat-load", daemon=True).start()
        yield
        if state.pool is not None:
            state.pool.shutdown()

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={HTTPException: on_http_error, ApiError: on_api_error, Exception: on_crash})
    app.state.nanochat, app.state.config, app.state.metrics = state, config, metrics
    app.state.page = resources.files("nanochat.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app.add_middleware(Guard, config=config, metrics=metrics)
    app.add_middleware(guard.ConnectionGuard, allow_origins=config.allow_origins)  # outermost: it sees every request first
    return app
