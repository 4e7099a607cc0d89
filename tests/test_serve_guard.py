"""The server's connection guards against a real server on 127.0.0.1, with raw sockets where a client library
would be too polite: clients that announce a body and never send it, clients that trickle their headers,
cross-site "simple" and form posts, malformed Host headers, the JSON-only POST routes, unknown request
fields; /health is timed from another process throughout, against an idle control server. Then the pure parts (Host, Origin, content types)
against tables of hand-written cases."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time

import httpx
import pytest

from nanochat.common.errors import UsageError
from nanochat.serve import guard
from tests.inference_helpers import HealthRace, ThreadServer, make_app, process_server


pytestmark = pytest.mark.usefixtures("one_torch_thread")


GOOD = {"model": "nanochat", "messages": [{"role": "user", "content": "Hello world!"}], "max_tokens": 2, "temperature": 0.0}
KEY = "test-key-1234"

def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    return s


def wait_closed(socks: list[socket.socket], limit: float) -> tuple[dict[int, float], dict[int, bytes]]:
    """Read every socket until the server closes it or `limit` s pass: {index: seconds until closed}, {index: bytes read}."""
    t0 = time.monotonic()
    closed: dict[int, float] = {}
    got = {i: b"" for i in range(len(socks))}
    with selectors.DefaultSelector() as sel:
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        while sel.get_map() and time.monotonic() - t0 < limit:
            for key, _ in sel.select(timeout=0.1):
                i = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    chunk = b""
                if chunk:
                    got[i] += chunk
                    continue
                closed[i] = time.monotonic() - t0
                sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    return closed, got


def post_head(port: int, length: int, key: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{auth}{extra}Content-Length: {length}\r\n\r\n").encode()  # fmt: skip


def test_clients_that_announce_a_body_and_never_send_it_are_closed():
    # 200 clients without the key announce 1000 bytes and send none (they held 200 connections open for
    # good); 5 clients with the key do the same and meet the body deadline instead (408 at 30 s)
    with process_server(api_key=KEY) as url:
        port = int(url.rsplit(":", 1)[1])
        with HealthRace(url) as race:
            socks = []
            for i in range(205):
                s = connect(port)
                s.sendall(post_head(port, 1000, key=KEY if i >= 200 else None))
                socks.append(s)
            t_sent = time.monotonic()
            closed, got = wait_closed(socks, limit=guard.BODY_TIMEOUT_S + 10)
            elapsed = time.monotonic() - t_sent
        refused = [closed.get(i) for i in range(200)]
        assert None not in refused, f"{refused.count(None)} of 200 unauthenticated connections still open after {elapsed:.0f} s"
        assert all(got[i].startswith(b"HTTP/1.1 401") for i in range(200)), {got[i][:40] for i in range(200)}
        slow = [closed.get(i) for i in range(200, 205)]
        assert None not in slow and all(got[i].startswith(b"HTTP/1.1 408") for i in range(200, 205)), (slow, [got[i][:40] for i in range(200, 205)])
        print(f"\n401 clients closed after at most {max(refused):.2f} s; 408 clients after {min(slow):.1f}-{max(slow):.1f} s; {race.summary()}")
        assert max(refused) <= 35 and max(slow) <= 35
        race.check(floor_s=0.05, ratio=3)
        assert httpx.post(url + "/v1/chat/completions", json=GOOD, headers={"Authorization": f"Bearer {KEY}"}, timeout=60).status_code == 200


def test_slow_header_senders_are_closed_at_the_header_deadline():
    with process_server() as url:
        port = int(url.rsplit(":", 1)[1])
        with HealthRace(url) as race:
            socks = [connect(port) for _ in range(50)]
            for s in socks:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
            stop = threading.Event()

            def trickle():  # one more byte of the header every second, never its end
                while not stop.wait(1.0):
                    for s in socks:
                        try:
                            s.send(b"a")
                        except OSError:
                            pass

            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            try:
                closed, _ = wait_closed(list(socks), limit=guard.HEADER_TIMEOUT_S + 15)
            finally:
                stop.set()
                t.join()
        times = [closed.get(i) for i in range(50)]
        assert None not in times, f"{times.count(None)} of 50 slow-header connections still open"
        print(f"\nslow-header clients closed after {min(times):.1f}-{max(times):.1f} s (deadline {guard.HEADER_TIMEOUT_S:g} s); {race.summary()}")
        # closed at the deadline (not before: they were sending), and within it plus scheduling slack
        assert guard.HEADER_TIMEOUT_S - 1 <= min(times) and max(times) <= guard.HEADER_TIMEOUT_S + 3
        race.check(floor_s=0.05, ratio=3)


def read_answer(sock: socket.socket, limit: float = 10) -> tuple[bytes, float, bool]:
    """(the answer's bytes, seconds until its end, whether the server closed the connection after it)."""
    t0, data = time.monotonic(), b""
    sock.settimeout(limit)
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(data.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - t0, True
        data += chunk
    took = time.monotonic() - t0
    sock.settimeout(1.0)
    try:
        closed = sock.recv(1) == b""
    except (socket.timeout, ConnectionError):
        closed = False
    return data, took, closed


def test_a_refused_request_is_answered_at_once_and_closed_unless_its_body_was_read():
    with ThreadServer(make_app(api_key=KEY)) as s:
        body = json.dumps(GOOD).encode()
        # the whole body arrives: read, answered at once, and the connection stays usable
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(post_head(s.port, len(body)) + body)
            data, took, closed = read_answer(sock)
            assert data.startswith(b"HTTP/1.1 401") and took < 3 and not closed
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
            assert read_answer(sock)[0].startswith(b"HTTP/1.1 200")
        # half of it arrives: answered after the short drain, with Connection: close, and closed
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(post_head(s.port, len(body)) + body[: len(body) // 2])
            data, took, closed = read_answer(sock)
            assert data.startswith(b"HTTP/1.1 401") and b"connection: close" in data.lower() and closed
            assert guard.DRAIN_S - 0.2 <= took <= guard.DRAIN_S + 2


@pytest.fixture(scope="module")
def server(one_torch_thread):
    app = make_app(allow_origins=guard.parse_allow_origin("https://app.example.com"))
    with ThreadServer(app) as s:
        s.app = app
        yield s


def generated_tokens(s) -> int:
    return s.app.state.metrics.completion_tokens


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


CROSS_SITE = [
    # (headers, content type) that a page on another site can make a browser send without asking the server
    ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, "text/plain"),
    ({"Origin": "null", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, "application/x-www-form-urlencoded"),
    ({"Origin": "http://evil.example"}, "application/json"),  # even with a preflight-worthy type
    ({"Origin": "http://127.0.0.1.evil.example"}, "text/plain"),
    ({"Origin": "http://localhost:1"}, "text/plain"),  # another port on this machine is another site
    ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, "text/plain"),  # no Origin, the browser still says where from
    ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}, "application/json"),
]


@pytest.mark.parametrize("headers,ctype", CROSS_SITE, ids=[f"{h.get('Origin', 'no-origin')}-{c}" for h, c in CROSS_SITE])
def test_cross_site_posts_are_refused_and_run_nothing(server, headers, ctype):
    before = generated_tokens(server)
    body = json.dumps(GOOD) if ctype != "application/x-www-form-urlencoded" else "x=" + json.dumps(GOOD)
    r = httpx.post(server.url + "/v1/chat/completions", content=body.encode(), headers={**headers, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", r.text
    assert "--allow-origin" in r.json()["error"]["message"] or "own page" in r.json()["error"]["message"]
    assert generated_tokens(server) == before


def test_the_servers_own_page_and_non_browser_clients_keep_working(server):
    own = f"http://127.0.0.1:{server.port}"
    page = httpx.get(server.url + "/", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 200 and "<html" in page.text.lower()
    # a link from another site to the page opens it (a top-level navigation runs nothing)
    assert httpx.get(server.url + "/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}).status_code == 200
    # what the page's script sends
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert httpx.post(server.url + "/v1/chat/completions", json=GOOD, headers=same, timeout=60).status_code == 200
    assert httpx.get(server.url + "/health", headers=same).status_code == 200
    # the page reached as localhost (Origin and Host agree; default ports compared as such)
    r = httpx.post(server.url + "/v1/chat/completions", json=GOOD, headers={"Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"}, timeout=60)
    assert r.status_code == 200
    # curl, the openai SDK: no Origin, no Sec-Fetch-*
    assert httpx.post(server.url + "/v1/chat/completions", json=GOOD, timeout=60).status_code == 200


def test_allow_origin_lets_that_site_in_with_cors(server):
    origin = "https://app.example.com"
    pre = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"] and "content-type" in pre.headers["access-control-allow-headers"]
    r = httpx.post(server.url + "/v1/chat/completions", json=GOOD, headers={"Origin": origin, "Sec-Fetch-Site": "cross-site"}, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    other = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": "https://other.example.com", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("host", ["127.0.0.1:{port}@evil.com", "evil.com@127.0.0.1:{port}", "127.0.0.1:{port}/x", "127.0.0.1:{port} evil.com",
                                  "127.0.0.1:99999", "127.0.0.1:{port}:1", "[::1", "[zz::1]:{port}", "127.0.0.1:", "user:pw@127.0.0.1", "-localhost"])  # fmt: skip
def test_malformed_host_headers_are_refused(server, host):
    data = raw(server.port, f"GET /health HTTP/1.1\r\nHost: {host.format(port=server.port)}\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 400"), data[:200]


def test_well_formed_hosts_pass_and_others_are_still_not_allowed(server):
    assert raw(server.port, f"GET /health HTTP/1.1\r\nHost: [::1]:{server.port}\r\n\r\n".encode()).startswith(b"HTTP/1.1 200")
    assert raw(server.port, f"GET /health HTTP/1.1\r\nHost: LOCALHOST:{server.port}\r\n\r\n".encode()).startswith(b"HTTP/1.1 200")
    assert raw(server.port, b"GET /health HTTP/1.1\r\nHost: evil.com\r\n\r\n").startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                   "application/json; charset=latin-1", "application/jsonx", "text/json"])  # fmt: skip
def test_post_routes_take_only_json(server, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    for route, body in (("/v1/chat/completions", GOOD), ("/v1/completions", {"prompt": "Hi", "max_tokens": 1})):
        r = httpx.post(server.url + route, content=json.dumps(body).encode(), headers=headers, timeout=30)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (ctype, r.text)
    ok = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(GOOD).encode(), headers={"Content-Type": "application/json; charset=UTF-8"}, timeout=60)
    assert ok.status_code == 200


@pytest.mark.parametrize("route,field,value,status", [
    ("/v1/chat/completions", "temprature", 0.5, 400),  # a typo is an error, not a silent no-op
    ("/v1/chat/completions", "max_token", 5, 400),
    ("/v1/chat/completions", "prompt", "hi", 400),  # a completions field
    ("/v1/chat/completions", "echo", True, 400),
    ("/v1/chat/completions", "x" * 500, 1, 400),
    ("/v1/completions", "messages", [], 400),
    ("/v1/completions", "top_logprobs", 2, 400),
    ("/v1/chat/completions", "stop", 0, 422),
    ("/v1/chat/completions", "stop", [1], 422),
    ("/v1/chat/completions", "stop", {"a": 1}, 422),
    ("/v1/completions", "stop", 0, 422),
    ("/v1/chat/completions", "user", 5, 422),
    ("/v1/chat/completions", "metadata", "x", 422),
    ("/v1/chat/completions", "store", "yes", 422),
    ("/v1/chat/completions", "frequency_penalty", "0", 422),
    ("/v1/chat/completions", "presence_penalty", 3, 422),
    ("/v1/chat/completions", "modalities", ["text", "audio"], 400),
    ("/v1/chat/completions", "reasoning_effort", "low", 400),
    ("/v1/completions", "presence_penalty", 3, 422),
    ("/v1/completions", "frequency_penalty", "1", 422),
    ("/v1/completions", "user", ["a"], 422),
])  # fmt: skip
def test_unknown_and_mistyped_fields_are_refused(server, route, field, value, status):
    base = GOOD if route.endswith("chat/completions") else {"prompt": "Hi", "max_tokens": 1}
    r = httpx.post(server.url + route, json={**base, field: value}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == field[:60] + ("..." if len(field) > 60 else "") and field[:60] in err["message"]


@pytest.mark.parametrize("route,extra", [
    ("/v1/chat/completions", {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "parallel_tool_calls": True,
                              "frequency_penalty": 0, "presence_penalty": 0.0, "modalities": ["text"], "prompt_cache_key": "c", "safety_identifier": "s"}),
    ("/v1/completions", {"user": "u1", "frequency_penalty": 0, "presence_penalty": 0, "best_of": 1, "echo": False}),
])  # fmt: skip
def test_documented_no_op_fields_are_accepted(server, route, extra):
    base = GOOD if route.endswith("chat/completions") else {"prompt": "Hi", "max_tokens": 1}
    assert httpx.post(server.url + route, json={**base, **extra}, timeout=60).status_code == 200


# ----------------------------------------------------------------------------------------------------------
# the pure parts


@pytest.mark.parametrize("value,host", [
    ("127.0.0.1", "127.0.0.1"), ("127.0.0.1:8000", "127.0.0.1"), ("LocalHost:1", "localhost"), ("[::1]:8000", "::1"),
    ("[0:0::1]", "::1"), ("my_service.internal", "my_service.internal"), ("a-b.example.com:443", "a-b.example.com"),
    ("127.0.0.1:8000@evil.com", None), ("evil.com@127.0.0.1", None), ("127.0.0.1:65536", None), ("127.0.0.1:", None),
    ("::1", None), ("[::1", None), ("[::g]", None), ("a b", None), ("a/b", None), ("", None), (".", None), ("-a", None),
    ("a:1:2", None), ("a\tb", None), ("ä.example", None), ("127.0.0.1:8000?", None), ("127.0.0.1#x", None),
])  # fmt: skip
def test_parse_host(value, host):
    assert guard.parse_host(value) == host


@pytest.mark.parametrize("origin,expected", [
    ("http://Example.COM", "http://example.com"), ("https://a.example:443", "https://a.example"), ("http://a:80/", "http://a"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"), ("http://[::1]:8000", "http://[::1]:8000"),
    ("null", None), ("file://", None), ("ftp://a", None), ("http://a/path", None), ("http://u@a", None), ("", None), ("http://", None),
])  # fmt: skip
def test_normalize_origin(origin, expected):
    assert guard.normalize_origin(origin) == expected


def test_cross_site_decisions():
    allowed = frozenset({"https://app.example.com"})
    host = {"host": "127.0.0.1:8000"}
    cases = [
        ({}, "POST", True),
        ({"origin": "http://127.0.0.1:8000"}, "POST", True),
        ({"origin": "http://127.0.0.1:8001"}, "POST", False),
        ({"origin": "https://app.example.com"}, "POST", True),
        ({"origin": "https://APP.example.com:443"}, "POST", True),
        ({"origin": "https://app.example.com.evil"}, "POST", False),
        ({"origin": "null"}, "POST", False),
        ({"origin": "http://proxy.example", "sec-fetch-site": "same-origin"}, "POST", True),
        ({"sec-fetch-site": "none"}, "GET", True),
        ({"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}, "GET", True),
        ({"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}, "POST", False),
        ({"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}, "GET", False),
    ]
    for headers, method, ok in cases:
        assert (guard.cross_site_problem({**host, **headers}, method, allowed) is None) == ok, (headers, method)
    assert guard.cross_site_problem({**host, "origin": "http://evil.example"}, "POST", frozenset({"*"})) is None


def test_parse_allow_origin():
    assert guard.parse_allow_origin(None) is None
    assert guard.parse_allow_origin(" https://A.example , http://localhost:3000 ") == {"https://a.example", "http://localhost:3000"}
    assert guard.parse_allow_origin("*") == {"*"}
    for bad in ("", ",", "app.example.com", "null", "https://a.example/path", "javascript:alert(1)"):
        with pytest.raises(UsageError, match="--allow-origin"):
            guard.parse_allow_origin(bad)


@pytest.mark.parametrize("value,ok", [
    ("application/json", True), ("Application/JSON", True), ("application/json; charset=utf-8", True), ('application/json;charset="UTF-8"', True),
    (None, False), ("", False), ("text/plain", False), ("application/json; charset=latin-1", False), ("application/json; boundary=x", False),
    ("application/json-seq", False), ("text/plain; application/json", False),
])  # fmt: skip
def test_json_content_type(value, ok):
    assert guard.is_json_content_type(value) == ok
