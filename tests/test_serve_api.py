"""`nanochat serve`'s HTTP API against a real uvicorn on 127.0.0.1: the official openai client
(streaming and not), models, health while loading, metrics, API key, Host allow-list, bind refusal,
the page, and no conversation logging by default."""

from __future__ import annotations

import base64
import json
import logging
import threading

import httpx
import pytest

openai = pytest.importorskip("openai")  # the official client (dev extra); the GPU machine may lack it

from tests.inference_helpers import ThreadServer, display_text, make_app, tiny_engine, wait_ready  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


MSG = [{"role": "user", "content": "Hello world!"}]


def test_openai_client_non_streaming(client):
    r = client.chat.completions.create(model="nanochat-test", messages=MSG, max_tokens=12, temperature=0.0)
    assert r.object == "chat.completion" and r.model == "nanochat-test"
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 3 and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # greedy is deterministic, and equals what the engine produces directly from the same prompt
    again = client.chat.completions.create(model="nanochat-test", messages=MSG, max_tokens=12, temperature=0.0)
    assert again.choices[0].message.content == r.choices[0].message.content
    eng = tiny_engine()
    from nanochat.engine.prompt import render_chat_prompt

    from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

    seq, _ = eng.generate_batch(render_chat_prompt(eng.tokenizer, MSG, 100), max_tokens=12, temperature=0.0,
                                repetition_penalty=CHAT_REPETITION_PENALTY, no_repeat_ngram=CHAT_NO_REPEAT_NGRAM)  # the server's defaults
    assert r.choices[0].message.content == display_text(eng.tokenizer, seq[0])


def test_openai_client_streaming(client):
    stream = client.chat.completions.create(
        model="nanochat-test", messages=MSG, max_tokens=16, temperature=0.0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1
    full = client.chat.completions.create(model="nanochat-test", messages=MSG, max_tokens=16, temperature=0.0)
    assert text == full.choices[0].message.content


def test_raw_sse_ends_with_done_and_seeds_repeat(server):
    body = {"messages": MSG, "max_tokens": 8, "temperature": 1.0, "seed": 7, "stream": True, "n": 2}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    indices = {c["index"] for e in events[:-1] for c in json.loads(e[6:])["choices"]}
    assert indices == {0, 1}
    nonstream = {**body, "stream": False}
    a = httpx.post(server.url + "/v1/chat/completions", json=nonstream, timeout=30).json()
    b = httpx.post(server.url + "/v1/chat/completions", json=nonstream, timeout=30).json()
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["nanochat-test"]
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["ready"] is True
    client.chat.completions.create(model="nanochat-test", messages=MSG, max_tokens=3)
    m = httpx.get(server.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    lines = m.text.splitlines()
    assert any(line.startswith('nanochat_requests_total{route="/v1/chat/completions",status="200"}') for line in lines)
    tokens = [float(line.split()[-1]) for line in lines if line.startswith("nanochat_completion_tokens_total ")]
    assert tokens and tokens[0] >= 3
    assert any(line.startswith("nanochat_request_duration_seconds_bucket") for line in lines)


def test_errors_are_openai_envelopes(server, client):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="nanochat-test", messages=[{"role": "user", "content": "hi"}], temperature=3.0)
    assert e.value.body["param"] == "temperature" or "temperature" in str(e.value)
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_page_is_served_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html.split("<script>")[0]


def test_health_503_then_200():
    from nanochat.serve.app import ServeConfig, create_app

    gate = threading.Event()

    def load():
        gate.wait(30)
        return [tiny_engine()]

    try:
        with ThreadServer(create_app(ServeConfig(), load), wait=False) as srv:
            r = httpx.get(srv.url + "/health", timeout=2)
            assert r.status_code == 503 and r.json()["status"] == "loading"
            c = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG})
            assert c.status_code == 503 and "Retry-After" in c.headers and c.json()["error"]["code"] == "model_loading"
            gate.set()
            wait_ready(srv.url, timeout=30)
    finally:
        gate.set()


def test_api_key_and_host_allow_list():
    with ThreadServer(make_app(api_key="s3cret")) as s:
        assert httpx.get(s.url + "/health").status_code == 200  # health needs no key
        for path in ("/v1/models", "/metrics", "/"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(s.url + "/").headers["www-authenticate"].startswith("Basic")
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        basic = base64.b64encode(b"me:s3cret").decode()
        assert httpx.get(s.url + "/", headers={"Authorization": "Basic " + basic}).status_code == 200
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="nanochat-test", messages=MSG, max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example
        r = httpx.get(s.url + "/health", headers={"Host": "evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
        assert httpx.get(s.url + "/health", headers={"Host": f"localhost:{s.port}"}).status_code == 200


def test_refuses_public_bind_without_key():
    from nanochat.common.errors import NanochatError
    from nanochat.serve.app import check_bind

    with pytest.raises(NanochatError, match="--api-key"):
        check_bind("0.0.0.0", None, insecure=False)
    check_bind("0.0.0.0", "k", insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    check_bind("127.0.0.1", None, insecure=False)
    check_bind("::1", None, insecure=False)


def test_conversations_not_logged_unless_asked(caplog):
    secret = "my secret diary entry"
    with caplog.at_level(logging.DEBUG):
        with ThreadServer(make_app()) as s:
            httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": secret}], "max_tokens": 2})
    assert secret not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nanochat.serve"):
        with ThreadServer(make_app(log_requests=True)) as s:
            httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": secret}], "max_tokens": 2})
    assert secret in caplog.text


def test_serve_command_over_a_real_checkpoint(nanochat_home):
    """`nanochat serve` end to end: checkpoint on disk -> uvicorn on 127.0.0.1 -> the openai client."""
    import subprocess
    import sys

    from tests.inference_helpers import free_port
    from tests.test_chat_cli import save_tiny_checkpoint

    save_tiny_checkpoint(nanochat_home, source="sft", tag="d1", step=3)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanochat", "serve", "--port", str(port), "--device", "cpu", "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=90, proc=proc)
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["nanochat-sft-d1-step3"]
        r = c.chat.completions.create(model="nanochat-sft-d1-step3", messages=MSG, max_tokens=5)
        assert r.usage.completion_tokens <= 5 and r.choices[0].message.role == "assistant"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "serving nanochat-sft-d1-step3" in out and "Hello world" not in out  # the conversation is not logged


def test_long_conversation_is_truncated_to_fit(server):
    convo = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: the quick brown fox jumps over the lazy dog"} for i in range(401)]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": convo, "max_tokens": 20}, timeout=30)
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + 20 <= 128  # the tiny model's context
    assert usage["prompt_tokens"] > 20  # the newest turns were kept, not everything dropped


def test_failed_load_reports_503_with_the_reason():
    from nanochat.serve.app import ServeConfig, create_app

    def load():
        raise RuntimeError("weights are corrupt")

    with ThreadServer(create_app(ServeConfig(), load), wait=False) as srv:
        for _ in range(200):
            r = httpx.get(srv.url + "/health", timeout=2)
            if r.json()["status"] == "failed":
                break
            threading.Event().wait(0.05)
        assert r.status_code == 503 and "weights are corrupt" in r.json()["error"]
        c = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG})
        assert c.status_code == 503 and c.json()["error"]["code"] == "model_failed"
