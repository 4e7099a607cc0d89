"""Continuous batching in `nanochat serve`: requests that share decode steps (joining and leaving between
tokens) stream exactly what each gives alone through `engine.reply.Reply` over `Engine.generate` (the chat
path, a second code path): greedy with different prompt lengths and max_tokens, a stop sequence, the
repetition guards, a seeded sampled request with two choices and log-probabilities, a request that joins
mid-decode and a client that leaves mid-way; the decode batch itself against Engine.generate; and the
queue bound's 503. A gate on the batch's steps (not timing) makes the requests overlap, and the batch's
`on_forward` hook counts how many requests each decode forward carried."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.inference_helpers import ThreadServer, WrappedBatch, tiny_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "nanochat-test"


class GatedBatch(WrappedBatch):
    """An engine's real decode batch; `before_step(step number)` runs before each step (it may wait), and
    every decode forward's count of requests fed is recorded."""

    def __init__(self, batch, before_step, fed: list):
        super().__init__(batch)
        self.before_step, self.steps = before_step, 0
        batch.on_forward = lambda rows, requests: fed.append(requests)

    def step(self):
        self.steps += 1
        self.before_step(self.steps)
        return self.batch.step()


def gated_app(before_step, fed: list, decode: str = "eager", **config):
    """The real app over one tiny engine (in decode mode `decode`) whose decode batch is gated by `before_step`."""
    from nanochat.engine.engine import Engine
    from nanochat.serve.app import ServeConfig, create_app

    def load():
        plain = tiny_engine()
        eng = Engine(plain.model, plain.tokenizer, calculator=plain.calculator, decode=decode)
        eng.decode_batch = lambda slots: GatedBatch(Engine.decode_batch(eng, slots), before_step, fed)
        return [eng]

    return create_app(ServeConfig(model_name=MODEL, **config), load)


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def reference_events(body: dict) -> list[tuple]:
    """What the request streams when generated alone through Reply and Engine.generate: (choice, text, finish) per chunk."""
    from nanochat.engine.reply import Reply, ReplyParams

    eng = tiny_engine()
    tok = eng.tokenizer
    stop = body.get("stop") or ()
    params = ReplyParams(body["max_tokens"], body.get("temperature", 1.0), None, None, body.get("seed"), body.get("n", 1), stop=tuple([stop] if isinstance(stop, str) else stop),
                         logprobs=body.get("logprobs"), repetition_penalty=body.get("repetition_penalty", 1.0), no_repeat_ngram=body.get("no_repeat_ngram_size", 0))  # fmt: skip
    out = []
    for ev in Reply(eng, [tok.bos_id] + tok.encode(body["prompt"]), params).events():
        if ev[0] == "delta":
            out.append((ev[1], ev[2], None, [e["token"] for e in ev[3]], [e["logprob"] for e in ev[3]]))
        elif ev[0] == "finish":
            out.append((ev[1], "", ev[2], [], []))
        else:
            out.append(("usage", ev[1]))
    return out


def stream(url: str, body: dict, results: dict, key: str, leave_after: int | None = None) -> None:
    """Stream one completion; results[key] = the chunks as (choice, text, finish, tokens, logprobs), usage last."""
    got = []
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "model": MODEL, "stream": True, "stream_options": {"include_usage": True}}, timeout=120) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                for c in obj["choices"]:
                    lp = c["logprobs"] or {"tokens": [], "token_logprobs": []}
                    got.append((c["index"], c["text"], c["finish_reason"], lp["tokens"], lp["token_logprobs"]))
                if obj.get("usage"):
                    got.append(("usage", obj["usage"]))
                if leave_after is not None and len(got) >= leave_after:
                    break  # the client goes away mid-answer
        results[key] = got
    except Exception as e:  # recorded; the test fails on it
        results[key] = repr(e)


def same_events(got: list, want: list) -> bool:
    """Equal chunk for chunk; log-probabilities equal to float precision (another batch shape rounds differently)."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g[0] == "usage" or w[0] == "usage":
            if g != w:
                return False
        elif g[:4] != w[:4] or g[4] != pytest.approx(w[4], rel=1e-4, abs=1e-5):
            return False
    return True


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_concurrent_requests_stream_what_each_gives_alone(decode):
    greedy = {"temperature": 0.0}
    bodies = {
        "A": {"prompt": "Hello world!", "max_tokens": 40, **greedy},
        "short": {"prompt": "The quick brown fox jumps over the lazy dog. " * 3, "max_tokens": 5, **greedy},
        "leaves": {"prompt": "Numbers: 12 + 30", "max_tokens": 60, **greedy},
        "sampled": {"prompt": "naïve café", "max_tokens": 30, "temperature": 0.9, "seed": 11, "n": 2, "logprobs": 2},
        "stop": {"prompt": "How are you today?", "max_tokens": 40, **greedy},
    }
    late = {"prompt": "I am fine, thank you.", "max_tokens": 20, "temperature": 0.0, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    full = "".join(ev[1] for ev in reference_events(bodies["stop"]) if ev[0] == 0)
    bodies["stop"]["stop"] = full[len(full) // 2 : len(full) // 2 + 3]  # a stop sequence in the middle of its answer
    assert bodies["stop"]["stop"].strip() and full.index(bodies["stop"]["stop"]) > 0
    want = {k: reference_events(b) for k, b in {**bodies, "late": late}.items()}
    assert any(ev[2] == "stop" for ev in want["stop"] if ev[0] == 0) and any(ev[2] == "length" for ev in want["A"] if ev[0] == 0)
    assert len({tuple(ev[1] for ev in want["sampled"] if ev[0] == i) for i in (0, 1)}) == 2  # the two choices differ

    fed: list = []
    mid = threading.Event()
    apps: list = []

    def before_step(n: int) -> None:
        pool = apps[0].state.nanochat.pool
        if n == 1:  # the first request has joined: the step waits until all five are in (they join at step 2)
            wait_for(lambda: pool._waiting >= len(bodies), "the first requests to arrive")
        if n == 8:  # the others are mid-answer (the short one has ended, freeing its slot): one more joins now
            mid.set()
            wait_for(lambda: pool._queue.qsize() >= 1, "the late request")

    app = gated_app(before_step, fed, decode, batch_slots=8)
    apps.append(app)
    with ThreadServer(app) as s:
        results: dict = {}
        threads = [threading.Thread(target=stream, args=(s.url, b, results, k, 4 if k == "leaves" else None)) for k, b in bodies.items()]
        for t in threads:
            t.start()
        assert mid.wait(60), "the batch never reached its eighth step"
        threads.append(threading.Thread(target=stream, args=(s.url, late, results, "late")))
        threads[-1].start()
        for t in threads:
            t.join(timeout=120)
        pool = app.state.nanochat.pool
        wait_for(lambda: pool.running == 0 and pool.waiting == 0, "the batch to empty")
    for k in ("A", "short", "sampled", "stop", "late"):
        assert same_events(results[k], want[k]), f"request {k!r} in the batch:\n{results[k]}\nalone:\n{want[k]}"
    left = results["leaves"]
    assert len(left) == 4 and left == want["leaves"][:4]  # what the leaving client saw is the start of its answer alone
    assert max(fed) >= 5, f"the decode forwards carried {sorted(set(fed))} requests: they never shared a step"


def test_decode_batch_equals_generate_with_joins_and_leaves():
    """The batch alone (no server): three prompts joining at different steps, one cancelled, one of two
    samples, against Engine.generate of each prompt alone."""
    eng = tiny_engine()
    tok = eng.tokenizer
    prompts = [[tok.bos_id] + tok.encode(t) for t in ("Hello world!", "Numbers: 12 + 30 = 42, 7 * 6 = 42 and more", "a")]
    settings = [dict(max_tokens=30, temperature=0.0), dict(max_tokens=12, temperature=0.0), dict(max_tokens=25, temperature=1.0, seed=3, num_samples=2)]
    alone = [[c for c, _ in eng.generate(p, **kw)] for p, kw in zip(prompts, settings)]
    fed: list = []
    batch = eng.decode_batch(5)
    batch.on_forward = lambda rows, requests: fed.append(requests)
    prefills: list = []
    batch.on_prefill = prefills.append  # prompts prefilled together
    got: dict = {i: [] for i in range(4)}
    batch.join(prompts[0], tag=0, **settings[0])
    step = 0
    while batch.entries:
        step += 1
        if step == 4:  # two more join while the first is mid-answer
            batch.join(prompts[1], tag=1, **settings[1])
            batch.join(prompts[2], tag=2, **settings[2])
        if step == 6:  # a request that leaves after one token: the others go on unchanged
            batch.join(prompts[1], tag=3, **settings[1])
        for entry, column in batch.step():
            got[entry.tag].append(column)
            if entry.ended or (entry.tag == 3 and len(got[3]) == 1):
                batch.leave(entry)
    assert [got[i] for i in range(3)] == alone
    assert got[3] == alone[1][:1]
    assert max(fed) == 3 and batch.free == 5
    assert prefills == [1, 2, 1]  # the two prompts (of different lengths) that joined at step 4 share one prefill forward


def test_same_seed_same_text_in_a_batch_and_seeds_differ():
    """Sampled requests decoded together: the same seed gives the same text (and the text it gives alone)."""
    apps: list = []
    fed: list = []
    runs = {"a": 5, "b": 5, "c": 6}

    def before_step(n: int) -> None:  # the first step waits for all three: they decode together
        if n == 1:
            wait_for(lambda: apps[0].state.nanochat.pool._waiting >= len(runs), "the three requests")

    app = gated_app(before_step, fed, batch_slots=4)
    apps.append(app)
    body = {"prompt": "Hello world!", "max_tokens": 16, "temperature": 1.0}
    with ThreadServer(app) as s:
        results: dict = {}
        threads = [threading.Thread(target=stream, args=(s.url, {**body, "seed": seed}, results, k)) for k, seed in runs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    text = {k: "".join(ev[1] for ev in results[k] if ev[0] == 0) for k in runs}
    assert text["a"] == text["b"] != text["c"] and max(fed) == 3
    assert same_events(results["a"], reference_events({**body, "seed": 5}))


def test_full_batch_and_queue_answer_503():
    """Two slots and one waiting place: the fourth request is refused with 503 and Retry-After, the three finish."""
    release = threading.Event()
    app = gated_app(lambda n: release.wait(60), [], batch_slots=2, queue_size=1)
    body = {"prompt": "Hello world!", "max_tokens": 6, "temperature": 0.0}
    with ThreadServer(app) as s:
        pool = app.state.nanochat.pool
        results: dict = {}
        threads = [threading.Thread(target=stream, args=(s.url, body, results, i)) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: pool._waiting == 3, "three requests in")
        r = httpx.post(s.url + "/v1/completions", json={**body, "model": MODEL}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "server_busy"
        h = httpx.get(s.url + "/health").json()
        # the held step froze the batch: one or two joined before it (as they arrived), the rest queued
        assert h["slots"] == 2 and h["running"] in (1, 2) and h["running"] + h["waiting"] == 3
        metrics = httpx.get(s.url + "/metrics").text.splitlines()
        assert {"nanochat_batch_slots 2", f"nanochat_requests_running {h['running']}", f"nanochat_queue_waiting {h['waiting']}"} <= set(metrics)
        too_many = httpx.post(s.url + "/v1/completions", json={**body, "model": MODEL, "n": 3}, timeout=30)
        assert too_many.status_code == 400 and "batch slots" in too_many.json()["error"]["message"]
        release.set()
        for t in threads:
            t.join(timeout=60)
    want = reference_events(body)
    assert all(same_events(results[i], want) for i in range(3)), results


@pytest.mark.parametrize("decode", ["static", pytest.param("graph", marks=pytest.mark.gpu)])
def test_static_and_graph_batches_equal_generate(decode):
    """The batch over static windows (rows and slots in powers of two; CUDA graphs on the GPU): greedy and
    seeded rows joining at different steps give what the engine's eager generate gives each alone."""
    from nanochat.engine.engine import Engine

    device = "cuda" if decode == "graph" else "cpu"
    eager = tiny_engine(sequence_len=300)
    eager.model.to(device)
    eager.device = eager.model.lm_head.weight.device
    eng = Engine(eager.model, eager.tokenizer, calculator=eager.calculator, decode=decode)
    tok = eng.tokenizer
    prompts = [[tok.bos_id] + tok.encode(t) for t in ("Hello world!", "The quick brown fox jumps over the lazy dog. " * 6, "a")]
    settings = [dict(max_tokens=40, temperature=0.0), dict(max_tokens=200, temperature=0.0), dict(max_tokens=30, temperature=1.0, seed=3, num_samples=2)]
    assert len(prompts[1]) + 200 > 256  # the long one crosses into a longer window of slots
    alone = [[c for c, _ in eager.generate(p, **kw)] for p, kw in zip(prompts, settings)]
    batch = eng.decode_batch(6)
    got: dict = {i: [] for i in range(3)}
    batch.join(prompts[1], tag=1, **settings[1])
    step = 0
    while batch.entries:
        step += 1
        if step in (3, 9):
            batch.join(prompts[0 if step == 3 else 2], tag=0 if step == 3 else 2, **settings[0 if step == 3 else 2])
        for entry, column in batch.step():
            got[entry.tag].append(column)
            if entry.ended:
                batch.leave(entry)
    assert [got[i] for i in range(3)] == alone
    assert {rows for rows, _ in batch._steps} >= {1, 2, 4} and {length for _, length in batch._steps} == {256, 300}
