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
well-formed Host, no cross-site browser requests unless --allow-origin), then `Guard`: the Host header must be allowed (DNS rebinding),
the API key must match when one is set (Bearer, or HTTP Basic with the key as password so that a
browser can open the page; constant-time compare; /health is exempt), a body over 1 MB is refused
with 413, a POST body that is not `application/json` with 415. Then `validation.parse_chat_request` turns any malformed body into a 400/413/422 JSON error, and a
`model` other than the served name (or the generic `nanochat`) gets 404. Every answer carries `usage`.
Generation runs on worker threads (`workers.WorkerPool`); when its bounded queue is full the answer
is 503 with Retry-After. A client that disconnects cancels its job, which stops at the next token.
Every error, whatever the route, is an OpenAI error envelope `{"error": {"message", "type", ...}}`.
Conversations are never logged unless `log_requests` is set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nanochat.common.errors import NanochatError, UsageError
from nanochat.engine.prompt import render_chat_prompt
from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY
from nanochat.serve import completions as completions_api
from nanochat.serve import guard
from nanochat.serve.outputs import chat_logprobs
from nanochat.serve.validation import MAX_BODY_BYTES, ApiError, check_model, parse_chat_request
from nanochat.serve.workers import GenParams, Job, QueueFull, WorkerPool

log = logging.getLogger("nanochat.serve")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
BODY_TIMEOUT_S = 30.0
DRAIN_LIMIT = guard.DRAIN_BYTES  # read (and drop) an oversized body up to this, so the client sees the 413
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allowed_hosts: list[str] | None = None  # None: loopback names when bound to loopback, else any; ["*"]: any
    queue_size: int = 16
    log_requests: bool = False
    model_name: str = "nanochat"
    default_max_tokens: int = 512
    retry_after_s: int = 1
    repetition_penalty: float = CHAT_REPETITION_PENALTY  # a request's repetition_penalty / no_repeat_ngram_size win
    no_repeat_ngram: int = CHAT_NO_REPEAT_NGRAM
    allow_origins: frozenset[str] | None = None  # --allow-origin: other sites whose pages may call the API

    def host_allow_list(self) -> set[str] | None:
        """Allowed Host names (lower case, no port), or None for no check."""
        if self.allowed_hosts is not None:
            names = {h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip()}
            return None if "*" in names else names
        if is_loopback(self.host):
            return set(LOOPBACK_NAMES) | {self.host.lower().strip("[]")}
        return None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose an unauthenticated server beyond this machine unless asked to."""
    if not is_loopback(host) and not api_key and not insecure:
        raise UsageError(
            f"refusing to bind {host} without an API key: anyone who can reach it could use the model; "
            "pass --api-key KEY (or --insecure to accept that), or bind 127.0.0.1"
        )


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Metrics:
    """Counters for /metrics (Prometheus text exposition format)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., sum, count]
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.rejected_busy = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            h = self.latency.setdefault(route, [0] * len(self.BUCKETS) + [0.0, 0])
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def add_tokens(self, n: int) -> None:
        with self._lock:
            self.completion_tokens += n

    def render(self, state: "ServerState") -> str:
        out = []

        def head(name, kind, help_):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("nanochat_requests_total", "counter", "HTTP requests by route and status code.")
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'nanochat_requests_total{{route="{route}",status="{status}"}} {n}')
            head("nanochat_request_duration_seconds", "histogram", "Time from request to the last byte of the response.")
            for route, h in sorted(self.latency.items()):
                for i, b in enumerate(self.BUCKETS):
                    out.append(f'nanochat_request_duration_seconds_bucket{{route="{route}",le="{b}"}} {h[i]}')
                out.append(f'nanochat_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {h[-1]}')
                out.append(f'nanochat_request_duration_seconds_sum{{route="{route}"}} {h[-2]:.6f}')
                out.append(f'nanochat_request_duration_seconds_count{{route="{route}"}} {h[-1]}')
            head("nanochat_completion_tokens_total", "counter", "Tokens generated.")
            out.append(f"nanochat_completion_tokens_total {self.completion_tokens}")
            head("nanochat_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.")
            out.append(f"nanochat_prompt_tokens_total {self.prompt_tokens}")
            head("nanochat_rejected_busy_total", "counter", "Requests refused with 503 because the queue was full.")
            out.append(f"nanochat_rejected_busy_total {self.rejected_busy}")
        pool = state.pool
        head("nanochat_ready", "gauge", "1 when the model is loaded and serving.")
        out.append(f"nanochat_ready {1 if state.status == 'ready' else 0}")
        head("nanochat_workers", "gauge", "Engine workers.")
        out.append(f"nanochat_workers {len(pool.workers) if pool else 0}")
        head("nanochat_workers_busy", "gauge", "Engine workers generating now.")
        out.append(f"nanochat_workers_busy {pool.busy if pool else 0}")
        head("nanochat_queue_waiting", "gauge", "Requests waiting for a worker.")
        out.append(f"nanochat_queue_waiting {pool.waiting if pool else 0}")
        return "\n".join(out) + "\n"


@dataclass
class ServerState:
    status: str = "loading"  # loading | ready | failed
    error: str | None = None
    pool: WorkerPool | None = None
    context_len: int = 0
    vocab_size: int = 0
    tokenizer: object = None
    created: int = field(default_factory=lambda: int(time.time()))


KNOWN_ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


class Guard:
    """ASGI middleware: Host allow-list, API key, body-size cap, and per-request metrics."""

    def __init__(self, app, config: ServeConfig, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.allowed = config.host_allow_list()
        self.key = config.api_key.encode("utf-8") if config.api_key else None

    def _authorized(self, header: str) -> bool:
        supplied = b""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            supplied = value.encode("utf-8", "replace")
        elif scheme.lower() == "basic":
            try:
                supplied = base64.b64decode(value, validate=True).partition(b":")[2]
            except ValueError:
                supplied = b""
        return hmac.compare_digest(supplied, self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        status = [0]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            err = self._check(scope)
            if err is not None:
                await _drain(receive, scope)
                await error_response(err)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(route, status[0] or 500, time.perf_counter() - t0)

    def _check(self, scope) -> ApiError | None:
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        if self.allowed is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed:
                return ApiError(403, f"Host {host!r} is not allowed; start the server with --allowed-hosts to add it", code="host_not_allowed")
        if self.key is not None and scope.get("path") != "/health":
            if not self._authorized(headers.get("authorization", "")):
                page = scope.get("path") == "/"
                challenge = 'Basic realm="nanochat", charset="UTF-8"' if page else 'Bearer realm="nanochat"'
                return ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key", headers={"WWW-Authenticate": challenge})
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return ApiError(400, "invalid Content-Length header", code="invalid_request")
            if int(length) > MAX_BODY_BYTES:
                return ApiError(413, f"request body is {int(length)} bytes; the limit is {MAX_BODY_BYTES}", code="body_too_large")
        if scope.get("method") == "POST" and scope.get("path") in guard.JSON_ROUTES and not guard.is_json_content_type(headers.get("content-type")):
            return ApiError(415, "the body must be JSON: send 'Content-Type: application/json'", code="unsupported_media_type")
        return None


def _host_name(host: str) -> str:
    return guard.parse_host(host) or ""  # a malformed Host never gets here: ConnectionGuard answers 400


_drain = guard.drain  # a refused request's body: read and dropped for a moment at most, never waited for


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


async def _wait_disconnect(receive) -> None:
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
            await _wait_disconnect(receive)
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


def create_app(config: ServeConfig, load: Callable[[], list]) -> Starlette:
    """The ASGI app. `load()` returns the engines (one per worker); it runs in a thread at startup,
    and /health answers 503 until it returns. Tests pass a `load` that returns in-memory engines."""
    state = ServerState()
    metrics = Metrics()

    def do_load():
        # generation threads hold the GIL for Python-level work between kernels; short switch slices
        # let the event loop thread take it back quickly, so /health stays fast while they generate
        sys.setswitchinterval(0.0005)
        try:
            engines = load()
            e0 = engines[0]
            state.context_len = e0.sequence_len
            state.tokenizer = e0.tokenizer
            state.vocab_size = e0.tokenizer.vocab_size
            state.pool = WorkerPool(engines, queue_size=config.queue_size, on_tokens=metrics.add_tokens)
            state.status = "ready"
            log.info("model ready: %d worker(s), context %d", len(engines), state.context_len)
        except Exception as e:  # the server stays up and says why in /health
            state.status, state.error = "failed", f"{type(e).__name__}: {e}"
            log.error("loading the model failed: %s", state.error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=do_load, name="nanochat-load", daemon=True).start()
        yield
        if state.pool is not None:
            state.pool.shutdown()

    def ready_pool() -> WorkerPool:
        if state.status == "ready":
            return state.pool
        if state.status == "failed":
            raise ApiError(503, f"the model failed to load: {state.error}", code="model_failed")
        raise ApiError(503, "the model is still loading; retry shortly", code="model_loading", headers={"Retry-After": "5"})

    html = resources.files("nanochat.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def health(request: Request) -> Response:
        pool = state.pool
        body = {"status": "ok" if state.status == "ready" else state.status, "ready": state.status == "ready", "model": config.model_name}
        if pool is not None:
            body.update(workers=len(pool.workers), busy=pool.busy, waiting=pool.waiting, context_len=state.context_len)
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503, headers={"Cache-Control": "no-store"})

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(state), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": config.model_name, "object": "model", "created": state.created, "owned_by": "nanochat"}]})

    async def chat_completions(request: Request) -> Response:
        pool = ready_pool()
        try:  # a client that trickles its body (slowloris) does not hold the connection forever
            body = await asyncio.wait_for(_read_body(request), timeout=BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s", code="request_timeout") from None
        req = parse_chat_request(body, context_len=state.context_len, vocab_size=state.vocab_size, default_max_tokens=config.default_max_tokens,
                                 default_repetition_penalty=config.repetition_penalty, default_no_repeat_ngram=config.no_repeat_ngram)  # fmt: skip
        check_model(req.model, config.model_name)
        try:
            prompt = render_chat_prompt(state.tokenizer, req.messages, state.context_len - req.max_tokens)
        except NanochatError as e:
            raise ApiError(422, str(e), param="messages", code="invalid_messages") from None
        params = GenParams(req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.n, stop=tuple(req.stop), logprobs=req.top_logprobs,
                           repetition_penalty=req.repetition_penalty, no_repeat_ngram=req.no_repeat_ngram,
                           frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty)  # fmt: skip
        job = Job(prompt, params, loop=asyncio.get_running_loop())
        try:
            pool.submit(job)
        except QueueFull:
            metrics.rejected_busy += 1
            raise ApiError(503, "all workers are busy and the queue is full; retry shortly", code="server_busy", headers={"Retry-After": str(config.retry_after_s)}) from None
        metrics.prompt_tokens += len(prompt)
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if config.log_requests:
            log.info("request %s: %s", rid, json.dumps(req.messages, ensure_ascii=False))
        if req.stream:
            return SSEResponse(job, _sse_chunks(job, rid, created, config, req, log_requests=config.log_requests))
        return await _complete(request, job, rid, created, config, req)

    async def completions(request: Request) -> Response:
        pool = ready_pool()
        try:
            body = await asyncio.wait_for(_read_body(request), timeout=BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s", code="request_timeout") from None
        req = completions_api.parse_completion_request(body, tokenizer=state.tokenizer, context_len=state.context_len, vocab_size=state.vocab_size)
        check_model(req.model, config.model_name)
        params = GenParams(
            req.max_tokens, req.temperature, req.top_k, req.top_p, req.seed, req.n,
            stop=tuple(req.stop), logprobs=req.logprobs, prompt_logprobs=req.echo and req.logprobs is not None,
            repetition_penalty=req.repetition_penalty, no_repeat_ngram=req.no_repeat_ngram,
            frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
        )  # fmt: skip
        job = Job(req.prompt_ids, params, loop=asyncio.get_running_loop())
        try:
            pool.submit(job)
        except QueueFull:
            metrics.rejected_busy += 1
            raise ApiError(503, "all workers are busy and the queue is full; retry shortly", code="server_busy", headers={"Retry-After": str(config.retry_after_s)}) from None
        metrics.prompt_tokens += len(req.prompt_ids)
        rid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if req.stream:
            return SSEResponse(job, completions_api.sse_chunks(job, rid, created, config.model_name, req))
        got = await _until_done_or_gone(request, job, completions_api.collect(job, req.n))
        if got is None:  # the client left; nobody will read this
            return Response(status_code=499)
        if got.error is not None:
            raise ApiError(500, got.error, code="generation_failed")
        return JSONResponse(completions_api.completion_body(rid, created, config.model_name, req, got))

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        msg = {404: "no such route; see GET /v1/models, POST /v1/chat/completions and POST /v1/completions", 405: f"method {request.method} is not allowed here"}
        return error_response(ApiError(exc.status_code, msg.get(exc.status_code, str(exc.detail)), code="http_error", headers=dict(exc.headers or {})))

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(ApiError(500, "internal server error", code="internal_error"))

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: on_http_error, ApiError: on_api_error, Exception: on_crash},
    )
    app.state.nanochat = state
    app.state.metrics = metrics
    app.add_middleware(Guard, config=config, metrics=metrics)
    app.add_middleware(guard.ConnectionGuard, allow_origins=config.allow_origins)  # outermost: it sees every request first
    return app


def _chunk(rid: str, created: int, model: str, choices: list, usage=None) -> bytes:
    obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def _sse_chunks(job: Job, rid: str, created: int, config: ServeConfig, req, log_requests: bool):
    model = config.model_name
    for i in range(req.n):
        yield _chunk(rid, created, model, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    reply = [] if log_requests else None
    while True:
        ev = await job.events.get()
        kind = ev[0]
        if kind == "delta":
            if reply is not None and ev[1] == 0:
                reply.append(ev[2])
            lp = {"content": chat_logprobs(ev[3]), "refusal": None} if req.top_logprobs is not None and len(ev) > 3 else None
            yield _chunk(rid, created, model, [{"index": ev[1], "delta": {"content": ev[2]}, "logprobs": lp, "finish_reason": None}])
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
            err = ApiError(500, ev[1], code="generation_failed").body()
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        else:  # cancelled
            return


async def _until_done_or_gone(request: Request, job: Job, collector_coro):
    """The collector's result, or None when the client disconnects first (the job is then cancelled)."""
    collector = asyncio.create_task(collector_coro)
    watcher = asyncio.create_task(_wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
            job.cancel.set()
    return collector.result() if collector in done else None


async def _complete(request: Request, job: Job, rid: str, created: int, config: ServeConfig, req) -> Response:
    got = await _until_done_or_gone(request, job, completions_api.collect(job, req.n))
    if got is None:  # the client left; nobody will read this
        return Response(status_code=499)
    if got.error is not None:
        raise ApiError(500, got.error, code="generation_failed")
    texts = ["".join(t) for t in got.texts]
    if config.log_requests:
        log.info("reply %s: %s", rid, texts[0])
    choices = []
    for i in range(req.n):
        logprobs = {"content": chat_logprobs(got.entries[i]), "refusal": None} if req.top_logprobs is not None else None
        choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": logprobs, "finish_reason": got.finish[i] or "length"})
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": config.model_name, "choices": choices, "usage": got.usage})
