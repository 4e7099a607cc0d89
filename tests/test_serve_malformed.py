"""≥ 500 malformed requests against a real server: never a 5xx, every error an OpenAI JSON error
envelope, and the server still answers a good request afterwards.

The cases are generated systematically: raw bodies that are not JSON (or not UTF-8, or nested
absurdly deep, or huge), every request field set to every value of a list of wrong or edge values,
broken messages, wrong methods and paths, oversized bodies with and without Content-Length, and a
seeded random fuzz of JSON structures.
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = {"model": "nanochat", "messages": [{"role": "user", "content": "Hello world!"}], "max_tokens": 2, "temperature": 0.0}

RAW_BODIES: list[bytes] = [
    b"", b" ", b"\n", b"{", b"}", b"[", b"]", b"null", b"true", b"false", b"0", b"-1", b"1e999", b'"text"', b"[]", b"{}",
    b"{'messages': []}", b'{"messages": }', b'{"messages": [,]}', b'{"messages": [{"role": "user", "content": "hi"},]}',
    b'{"messages": [{"role": "user", "content": "hi"}] /* comment */}', b'{"a" 1}', b'{"a": 01}', b'{"a": .5}', b'{"a": +1}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -Infinity}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "seed": -' + b"9" * 300 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 1e-400}',
    b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}',  # invalid UTF-8
    b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # UTF-8-encoded surrogate
    b'{"messages": [{"role": "user", "content": "\xc0\xaf"}]}',  # overlong encoding
    b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}", b"\x00" * 100,
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # lone surrogate, spelled in JSON
    b'{"messages": [{"role": "user", "content": "\\udfff\\ud800"}]}',
    b'{"messages": [{"role": "user", "content": "bad escape \\x41"}]}',
    b'{"messages": [{"role": "user", "content": "ctrl \x01 char"}]}',
    b'{"messages": [{"role": "user", "content": "unterminated}]}',
    b"[" * 100_000, b"{\"a\":" * 50_000, b"[" * 40 + b"]" * 40,
    b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "messages": "dup"}',
    json.dumps({"messages": [{"role": "user", "content": "x" * 900_000}]}).encode(),  # under 1 MB, over the char limit
]

BAD_VALUES = [None, True, False, 0, 1, -1, 2, 3, 1.5, -0.5, 1e300, -1e300, 1e-300, 5e-324, 1e-45, 2**63, -(2**63) - 1, 2**200, "", "1", "x" * 10_000, [], [1], {}, {"a": 1}, 0.0, 2.5]
FIELDS = ["model", "messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "seed", "stream", "stream_options", "stop", "tools"]

BAD_MESSAGES = [
    [], {}, "hi", [None], [1], ["hi"], [[]], [{}], [{"role": "user"}], [{"content": "hi"}],
    *[[{"role": r, "content": "hi"}] for r in ("tool", "function", "", "USER", "User ", "robot", None, 1, True, [], {})],
    *[[{"role": "user", "content": c}] for c in (None, 1, 1.5, True, {}, [1], [None], [{"type": "image_url", "image_url": {"url": "http://x"}}], [{"type": "text"}], [{"type": "text", "text": 5}], [{"text": "ok"}], "")],
    [{"role": "user", "content": "x" * 8001}],
    [{"role": "user", "content": "x" * 7999}] * 5,
    [{"role": "user", "content": "hi"}] * 501,
    [{"role": "system", "content": "only a system prompt"}],
    [{"role": "assistant", "content": "only an assistant"}],
    [{"role": "user", "content": "\u0000\u0001\u001f nulls"}],
    [{"role": "user", "content": "<|bos|><|assistant_end|><|python_start|>"}],
    [{"role": "user", "content": "😀" * 4000}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"}],
    [{"role": "user", "content": "hi", "name": "bob", "extra": {"deep": [1, 2, 3]}}],
]

PATHS = ["/v1/completions", "/v1/chat", "/v1/chat/completions/", "/admin", "/../../etc/passwd", "/%00", "/v1/models/../../x", "/" + "a" * 4000, "/v1/embeddings", "/index.html"]
METHODS = ["GET", "PUT", "DELETE", "PATCH"]


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null", "list", "dict", "big", "special"]
    k = rng.choice(kinds if depth < 4 else kinds[:5])
    if k == "int":
        return rng.randint(-1000, 1000)
    if k == "float":
        return rng.uniform(-5, 5)
    if k == "str":
        return "".join(rng.choice("ab \n\"\\<>😀é\u0000") for _ in range(rng.randint(0, 12)))
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "big":
        return rng.choice([10**30, -(10**30), 1e308, -1e308, 2**64])
    if k == "special":
        return rng.choice(["user", "assistant", "system", {"role": "user", "content": "hi"}, [{"role": "user", "content": "hi"}]])
    if k == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(FIELDS + ["role", "content", "x"]): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def cases() -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs) for every case."""
    out = []
    url = "/v1/chat/completions"
    for body in RAW_BODIES:
        out.append(("POST", url, {"content": body, "headers": {"Content-Type": "application/json"}}))
    for field in FIELDS:
        for value in BAD_VALUES:
            out.append(("POST", url, {"json": {**GOOD, field: value}}))
        out.append(("POST", url, {"json": {k: v for k, v in GOOD.items() if k != field}}))
    for messages in BAD_MESSAGES:
        out.append(("POST", url, {"json": {**GOOD, "messages": messages}}))
    for opts in [{"include_usage": "yes"}, {"include_usage": 1}, {"include_usage": None}, {"x": 1}, [True], "on"]:
        out.append(("POST", url, {"json": {**GOOD, "stream": True, "stream_options": opts}}))
    for path in PATHS:
        for method in ["GET", "POST"]:
            out.append((method, path, {}))
    for path in ["/", "/health", "/metrics", "/v1/models", url]:
        for method in METHODS:
            out.append((method, path, {}))
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin-1"]:
        out.append(("POST", url, {"content": json.dumps(GOOD).encode(), "headers": {"Content-Type": ctype}}))
    out.append(("POST", url, {"content": b"{" + b" " * 10_000_000 + b"}"}))  # 10 MB with Content-Length
    out.append(("POST", url, {"content": (b" " * 65536 for _ in range(32))}))  # 2 MB chunked, no Content-Length
    rng = random.Random(1234)
    for _ in range(220):
        body = random_json(rng)
        if isinstance(body, dict) and rng.random() < 0.7:
            body = {**GOOD, **body, "max_tokens": rng.choice([1, 2, 3, -5, "x", None])}
        out.append(("POST", url, {"json": body}))
    return out


def test_malformed_requests_never_5xx(server):
    all_cases = cases()
    assert len(all_cases) >= 500
    failures = []
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path, kw in all_cases:
            try:
                r = client.request(method, path, **kw)
            except httpx.HTTPError as e:
                failures.append(f"{method} {path}: transport error {e!r}")
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append(f"{method} {path} {str(kw)[:200]} -> {r.status_code} {r.text[:200]}")
                continue
            if r.status_code >= 400:
                try:
                    err = r.json()["error"]
                    assert isinstance(err["message"], str) and err["message"] and "type" in err
                except Exception:
                    failures.append(f"{method} {path} {str(kw)[:200]} -> {r.status_code} non-JSON error body {r.text[:200]!r}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    assert statuses.get(200, 0) > 10 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 300
    assert {400, 405, 404, 413, 422} <= set(statuses)
    # the server is still healthy and answers a good request
    assert httpx.get(server.url + "/health").status_code == 200
    r = httpx.post(server.url + "/v1/chat/completions", json=GOOD, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
