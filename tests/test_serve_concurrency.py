"""Load and disconnects: 32 streaming clients at once (each completes or gets 503 with Retry-After)
while /health stays fast, and a client that goes away frees its worker within two tokens."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.inference_helpers import HealthRace, ThreadServer, make_app, process_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATIO = 3.0
BODY = {"messages": [{"role": "user", "content": "Hello world! How are you?"}], "max_tokens": 40, "temperature": 1.0, "stream": True}


def stream_one(url: str, results: list, i: int) -> None:
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json={**BODY, "seed": i}, timeout=120) as r:
            if r.status_code != 200:
                r.read()
                results[i] = (r.status_code, r.headers.get("retry-after"), r.json())
                return
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
            results[i] = (200, events[-1], len(events))
    except Exception as e:  # recorded, and the test fails on it
        results[i] = ("exception", repr(e), None)


def test_32_streaming_clients_while_health_stays_fast():
    with process_server(queue_size=6) as url:
        httpx.post(url + "/v1/chat/completions", json={**BODY, "stream": False, "max_tokens": 2}, timeout=60)  # warm up
        results: list = [None] * 32
        idle = health_histogram(url)
        with HealthRace(url) as race:
            threads = [threading.Thread(target=stream_one, args=(url, results, i)) for i in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=180)
        ok = [r for r in results if r and r[0] == 200]
        busy = [r for r in results if r and r[0] == 503]
        assert len(ok) + len(busy) == 32, [r for r in results if not r or r[0] not in (200, 503)]
        assert len(ok) >= 7  # one running + six queued at least
        assert all(r[1] == "data: [DONE]" and r[2] >= 3 for r in ok)
        assert all(r[1] is not None and r[2]["error"]["code"] == "server_busy" for r in busy)
        print(f"\n{len(ok)} streamed, {len(busy)} refused; {race.summary()}")
        # seen by a client: /health while 32 clients stream is about as fast as an idle server's at the same time
        race.check(floor_s=0.1, ratio=RATIO)
        # server side (the app's own histogram): under load, /health is handled within 25 ms about as often as
        # before the load (what misses it on a busy machine is the OS descheduling the event loop, idle or not)
        loaded = {le: n - idle[le] for le, n in health_histogram(url).items()}
        idle_share, loaded_share = idle["0.025"] / idle["+Inf"], loaded["0.025"] / loaded["+Inf"]
        assert loaded_share >= min(0.97, idle_share - 0.03), (idle, loaded)


def health_histogram(url: str) -> dict[str, float]:
    """The server's cumulative /health latency buckets: {le: count}."""
    metrics = httpx.get(url + "/metrics").text.splitlines()
    return {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics if line.startswith('nanochat_request_duration_seconds_bucket{route="/health"')}


def test_disconnect_stops_generation_and_frees_the_worker():
    app = make_app(queue_size=2, slow=0.03)
    with ThreadServer(app) as s:
        pool = app.state.nanochat.pool
        engine = pool.engines[0]
        body = {**BODY, "max_tokens": 100}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                if seen >= 4:
                    break
            at_close = engine.steps
        # the connection is closed now; the worker must stop within 2 tokens
        deadline = time.monotonic() + 5
        while pool.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.busy == 0, "the worker is still generating for a client that left"
        assert engine.steps - at_close <= 2, f"{engine.steps - at_close} tokens generated after the disconnect"
        assert engine.steps < 50
        # a non-streaming client that times out is also cancelled
        before = engine.steps
        try:
            r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=0.4)
            raise AssertionError(f"the request should have timed out: {r.status_code} {r.text[:300]}")
        except httpx.TimeoutException:
            pass
        t_close = engine.steps
        deadline = time.monotonic() + 5
        while pool.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.busy == 0 and engine.steps - t_close <= 2 and engine.steps - before < 50
        # and the freed worker serves the next request
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and json.loads(r.text)["usage"]["completion_tokens"] == 3
