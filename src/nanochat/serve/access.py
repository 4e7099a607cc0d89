"""`Guard`, the ASGI middleware every request meets after `guard.ConnectionGuard`: the Host allow-list (DNS
rebinding), the API key (Bearer, or HTTP Basic with the key as password so a browser can open the page;
constant-time compare; /health is exempt), the body-size cap (413), JSON-only POST bodies (415), and the
per-route request metrics. `error_response` is an `ApiError` as the JSON response a client gets."""

from __future__ import annotations

import base64
import hmac
import time

from starlette.responses import JSONResponse

from nanochat.serve import guard
from nanochat.serve.config import ServeConfig
from nanochat.serve.metrics import Metrics
from nanochat.serve.validation import MAX_BODY_BYTES, ApiError


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


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
