"""The server's connection guards: deadlines on every connection, cross-site refusal, strict Host parsing.

Deadlines (`guarded_protocol`, installed by `uvicorn_config`): uvicorn's HTTP protocol, extended so that each
connection always has a clock running that it must beat, or it is closed:
- headers: `HEADER_TIMEOUT_S` from the connection (or from the end of the previous answer, so an idle
  keep-alive connection counts too) to the end of the request's headers. A client that trickles its headers
  (slowloris) is dropped.
- body: `BODY_TIMEOUT_S` from the headers to the end of the body (the app answers 408 a little earlier).
- write: a client that stops reading our answer for `WRITE_STALL_TIMEOUT_S` is dropped.
While the app works on a fully received request there is no clock (generation takes what it takes).
The ASGI middleware `ConnectionGuard` tells the clock where the request is (it finds it through a context
variable the protocol sets while uvicorn parses, so it works for any address family), and closes the
connection after any answer sent before the request's body was all read (`Connection: close`): a refused
request's body is drained for at most `DRAIN_S` and `DRAIN_BYTES` (`drain`), never waited for.

Cross-site requests (`cross_site_problem`): a browser names the page that sent a request (`Origin`,
`Sec-Fetch-Site`). One from another site is refused with 403 (a page elsewhere cannot make a visitor's
browser use the model, with a "simple" text/plain or form POST or any other), unless `--allow-origin`
names that site; those also get CORS headers and preflight answers. The server's own page, clients that are
not browsers (no such headers) and top-level navigations to a page keep working.

Host (`parse_host`): `name`, `IPv4` or `[IPv6]` with an optional port, nothing else (`127.0.0.1:1@evil.com`
is malformed, answered 400, not read as 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import re
from typing import Any

from nanochat.common.errors import UsageError
from nanochat.serve.validation import ApiError

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 35.0  # the routes answer 408 after 30 s; this closes what is left
WRITE_STALL_TIMEOUT_S = 60.0
KEEP_ALIVE_S = 5.0  # uvicorn's own idle timeout between requests (it closes sooner than HEADER_TIMEOUT_S)
DRAIN_S = 1.0  # a refused request's body is read and dropped for at most this long...
DRAIN_BYTES = 16 * 1024 * 1024  # ...and at most this much, so that a client still sending it sees the answer
JSON_ROUTES = ("/v1/chat/completions", "/v1/completions")

_current: contextvars.ContextVar["ConnectionClock | None"] = contextvars.ContextVar("nanochat_connection", default=None)


class ConnectionClock:
    """The running deadline of one connection. The protocol starts it; ConnectionGuard moves it along."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport, self.loop = transport, loop
        self.phase = "headers"
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._arm("headers", HEADER_TIMEOUT_S)

    def _arm(self, phase: str, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.phase = phase
        self._timer = self.loop.call_later(seconds, self._expire) if seconds is not None else None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def request_started(self, has_body: bool) -> None:
        self._arm("body", BODY_TIMEOUT_S) if has_body else self._arm("app", None)

    def body_done(self) -> None:
        if self.phase == "body":
            self._arm("app", None)

    def response_done(self) -> None:
        self._arm("headers", HEADER_TIMEOUT_S)  # idle, then the next request's headers

    def writing_paused(self) -> None:
        if self._stall is None:
            self._stall = self.loop.call_later(WRITE_STALL_TIMEOUT_S, self.transport.abort)

    def writing_resumed(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def stop(self) -> None:
        self._arm("closed", None)
        self.writing_resumed()


def guarded_protocol(base: type) -> type:
    """`base` (uvicorn's HTTP protocol class) with a ConnectionClock on every connection."""

    class GuardedProtocol(base):
        _clock: ConnectionClock | None = None

        def connection_made(self, transport):
            self._clock = ConnectionClock(transport, asyncio.get_running_loop())
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            # the request tasks uvicorn starts while parsing copy this context, and so find their connection
            token = _current.set(self._clock)
            try:
                super().data_received(data)
            finally:
                _current.reset(token)

        def connection_lost(self, exc):
            if self._clock is not None:
                self._clock.stop()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            if self._clock is not None:
                self._clock.writing_paused()
            super().pause_writing()

        def resume_writing(self) -> None:
            if self._clock is not None:
                self._clock.writing_resumed()
            super().resume_writing()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


def uvicorn_config(app, **kwargs: Any):
    """uvicorn.Config for `app` with the guarded h11 protocol and nanochat's timeouts; other settings as given."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    kwargs.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    return uvicorn.Config(app, http=guarded_protocol(H11Protocol), ws="none", **kwargs)


# ---------------------------------------------------------------------------------------------------------
# request checks

_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?))(?::(?P<port>[0-9]{1,5}))?")


def parse_host(value: str) -> str | None:
    """The host of a Host header (lower case, IPv6 without brackets, no port), or None when it is malformed."""
    m = _HOST.fullmatch(value.strip())
    if m is None or (m["port"] is not None and int(m["port"]) > 65535):
        return None
    if m["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(m["v6"]))
        except ValueError:
            return None
    return m["name"].lower()


def _authority(host_header: str) -> str | None:
    """`host[:port]` of a Host header, normalized (lower case), or None when malformed."""
    value = host_header.strip().lower()
    return value if parse_host(value) is not None else None


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None when it is not an http(s) origin."""
    m = re.fullmatch(r"(https?)://([^/?#@\s]+)/?", origin.strip().lower())
    if m is None or parse_host(m[2]) is None:
        return None
    scheme, authority = m[1], m[2]
    default = ":80" if scheme == "http" else ":443"
    if authority.endswith(default):
        authority = authority[: -len(default)]
    return f"{scheme}://{authority}"


def parse_allow_origin(value: str | None) -> frozenset[str] | None:
    """--allow-origin: comma-separated origins (`https://app.example.com`), `*` for any; None when not given."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError("--allow-origin needs at least one origin, e.g. --allow-origin https://app.example.com")
    if "*" in items:
        return frozenset({"*"})
    out = set()
    for item in items:
        origin = normalize_origin(item)
        if origin is None:
            raise UsageError(f"--allow-origin {item!r} is not an origin; write scheme://host[:port], e.g. https://app.example.com")
        out.add(origin)
    return frozenset(out)


def _same_origin(origin: str, host_header: str) -> bool:
    """Whether a normalized Origin names this server as the request reached it (its Host header)."""
    authority = _authority(host_header)
    if authority is None:
        return False
    scheme = origin.split("://", 1)[0]
    return normalize_origin(f"{scheme}://{authority}") == origin


def cross_site_problem(headers: dict[str, str], method: str, allowed: frozenset[str] | None) -> str | None:
    """Why a browser's request from another site is refused, or None when it may proceed."""
    if allowed is not None and "*" in allowed:
        return None
    origin, site = headers.get("origin"), headers.get("sec-fetch-site", "").strip().lower()
    if origin is not None:
        normalized = normalize_origin(origin)
        if normalized is not None and (normalized in (allowed or ()) or _same_origin(normalized, headers.get("host", ""))):
            return None
        if site == "same-origin":  # the browser says so (page scripts cannot set Sec-Fetch-*): behind a proxy
            return None
        shown = origin.strip()[:100] or "an empty origin"
        hint = f"start the server with --allow-origin {normalized}" if normalized else "use the server's own page or a non-browser client"
        return f"cross-site request from {shown} refused; {hint} to allow it"
    if site in ("cross-site", "same-site"):
        if method in ("GET", "HEAD") and headers.get("sec-fetch-mode", "").strip().lower() == "navigate":
            return None  # following a link to the page: nothing runs on the visitor's behalf
        return f"cross-site request refused (Sec-Fetch-Site: {site}); open the server's own page, or start it with --allow-origin SITE"
    return None


def is_json_content_type(value: str | None) -> bool:
    """`application/json`, with at most a `charset=utf-8` parameter."""
    if value is None:
        return False
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip() and (key.strip().lower() != "charset" or val.strip().strip('"').lower() not in ("utf-8", "utf8")):
            return False
    return True


async def drain(receive, scope) -> None:
    """Read and drop a refused request's body, for at most DRAIN_S and DRAIN_BYTES, so that a client still
    sending it can read the answer; a client that announced a body and does not send it is not waited for."""
    if scope.get("method") in ("GET", "HEAD"):
        return
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    if b"expect" in headers:  # 100-continue: the client waits for our answer before it sends anything
        return
    seen = 0

    async def read():
        nonlocal seen
        while seen <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(read(), timeout=DRAIN_S)
    except asyncio.TimeoutError:
        pass


def _headers(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


class ConnectionGuard:
    """ASGI middleware (outermost): moves the connection's clock along, refuses malformed Host headers (400) and
    cross-site requests (403), answers CORS preflights for --allow-origin, and closes the connection after an
    answer sent before the request's body was all read."""

    def __init__(self, app, allow_origins: frozenset[str] | None = None):
        self.app, self.allow_origins = app, allow_origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        clock = _current.get()
        headers = _headers(scope)
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")
        if clock is not None:
            clock.request_started(has_body)
        body_done = not has_body

        async def receive_tracked():
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
                if clock is not None:
                    clock.body_done()
            return message

        cors = self._cors_origin(headers)

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                extra = [(b"connection", b"close")] if not body_done else []
                if cors is not None:
                    extra += [(b"access-control-allow-origin", cors.encode("latin-1")), (b"vary", b"Origin")]
                if extra:
                    message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and clock is not None:
                clock.response_done()

        problem = self._problem(scope, headers)
        if problem is not None:
            from starlette.responses import JSONResponse

            await drain(receive_tracked, scope)
            return await JSONResponse(problem.body(), status_code=problem.status)(scope, receive_tracked, send_tracked)
        if scope.get("method") == "OPTIONS" and cors is not None and "access-control-request-method" in headers:
            return await self._preflight(send_tracked)
        await self.app(scope, receive_tracked, send_tracked)

    def _problem(self, scope, headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host")
        if host is not None and parse_host(host) is None:
            return ApiError(400, f"malformed Host header {host[:100]!r}; send the server's address as host[:port]", code="invalid_host")
        why = cross_site_problem(headers, scope.get("method", ""), self.allow_origins)
        if why is not None:
            return ApiError(403, why, code="cross_site_request")
        return None

    def _cors_origin(self, headers: dict[str, str]) -> str | None:
        """The Origin to echo in Access-Control-Allow-Origin: only one that --allow-origin names."""
        origin = headers.get("origin")
        if origin is None or not self.allow_origins:
            return None
        normalized = normalize_origin(origin)
        if "*" in self.allow_origins or normalized in self.allow_origins:
            return origin.strip()
        return None

    async def _preflight(self, send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"authorization, content-type"),
            (b"access-control-max-age", b"600"),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"", "more_body": False})
