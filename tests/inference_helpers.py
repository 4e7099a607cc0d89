"""Shared by the inference tests: a tiny tokenizer and random model built in-process, and a real
uvicorn server for them on 127.0.0.1 with an ephemeral port (in a thread, or in a child process)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from functools import lru_cache

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 8,
    "Hello world! How are you today? I am fine, thank you. " * 8,
    "Numbers: 12 + 30 = 42, 7 * 6 = 42, 100 / 4 = 25. " * 6,
    "Héllo wörld, naïve café — 你好，世界。 😀 🎉 " * 6,
]


@lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 384):
    from nanochat.data.tokenizer import Tokenizer

    return Tokenizer.train(TEXTS, vocab_size=vocab_size)


def tiny_model(tokenizer=None, n_layer: int = 2, sequence_len: int = 128, seed: int = 0, scale: float = 0.4):
    """A random model whose logits are far from uniform (the default init is nearly uniform), so that
    greedy decoding is well defined and sampling visibly depends on the seed."""
    import torch

    from nanochat.model import GPTConfig, build_model

    tok = tokenizer or tiny_tokenizer()
    cfg = GPTConfig(sequence_len=sequence_len, vocab_size=tok.vocab_size, n_layer=n_layer, n_head=2, n_kv_head=2, n_embd=32, window_pattern="L")
    model = build_model(cfg, "cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() < 2 or "wte" in str(p.shape) else scale * 4 / fan_in**0.5))
    model.eval()
    return model


def tiny_engine(calculator=None, **kw):
    from nanochat.engine.engine import Engine

    tok = tiny_tokenizer()
    return Engine(tiny_model(tok, **kw), tok, calculator=calculator or (lambda expr: None))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving `app` in a background thread on 127.0.0.1:<ephemeral>."""

    def __init__(self, app, wait: bool = True):
        import uvicorn

        self.wait = wait  # False: return once the socket answers, even while /health says 503
        self.port = free_port()
        from nanochat.serve.guard import uvicorn_config

        self.server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        if self.wait:
            wait_ready(self.url)
        else:
            wait_listening(self.url)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_listening(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
            return
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not listening after {timeout}s")


def wait_ready(url: str, timeout: float = 60.0, headers: dict | None = None, proc=None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TimeoutError(f"server process exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2, headers=headers).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not ready after {timeout}s")


def make_app(api_key: str | None = None, queue_size: int = 16, engines: int = 1, slow: float = 0.0, **config):
    """The real app over tiny engines; `slow` adds a sleep per generated token (to hold a worker busy)."""
    from nanochat.serve.app import ServeConfig, create_app

    def load():
        out = []
        for _ in range(engines):
            e = tiny_engine()
            if slow:
                e = SlowEngine(e, slow)
            out.append(e)
        return out

    return create_app(ServeConfig(api_key=api_key, queue_size=queue_size, model_name="nanochat-test", **config), load)


class SlowEngine:
    """Wraps an Engine: sleeps `delay` s per step, counts the steps it produced, and (endless) turns
    end-of-answer tokens into a letter, so that an answer always runs to max_tokens."""

    def __init__(self, engine, delay: float, endless: bool = True):
        self.engine, self.delay, self.endless = engine, delay, endless
        self.tokenizer, self.sequence_len, self.device = engine.tokenizer, engine.sequence_len, engine.device
        self.steps = 0

    def generate(self, *args, **kw):
        letter = self.tokenizer.encode("a")[0]
        for column, masks in self.engine.generate(*args, **kw):
            self.steps += 1
            if self.endless:
                column = [letter if t in self.engine.terminal else t for t in column]
            yield column, masks
            time.sleep(self.delay)

    def decode_batch(self, slots: int):
        return SlowBatch(self, self.engine.decode_batch(slots))


class WrappedBatch:
    """An engine's decode batch passed through (join, leave, free, entries): test doubles change `step`."""

    def __init__(self, batch):
        self.batch, self.slots = batch, batch.slots
        self.join, self.leave = batch.join, batch.leave

    @property
    def free(self) -> int:
        return self.batch.free

    @property
    def entries(self) -> list:
        return self.batch.entries

    def step(self):
        return self.batch.step()


class SlowBatch(WrappedBatch):
    """The engine's decode batch, slowed and counted as SlowEngine slows its `generate` (one sleep per step)."""

    def __init__(self, slow: SlowEngine, batch):
        super().__init__(batch)
        self.slow = slow

    def step(self):
        letter, terminal = self.slow.tokenizer.encode("a")[0], self.slow.engine.terminal
        out = self.batch.step()
        self.slow.steps += 1
        if self.slow.endless:
            out = [(e, [letter if t in terminal else t for t in column]) for e, column in out]
        time.sleep(self.slow.delay)
        return out


SERVER_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
import torch, uvicorn
torch.set_num_threads(1)  # what `nanochat serve` does on CPU: a core stays free for the event loop
from inference_helpers import make_app
from nanochat.serve.guard import uvicorn_config
app = make_app(queue_size={queue_size}, slow={slow}{extra})
uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)).run()
"""


@contextlib.contextmanager
def process_server(queue_size: int = 16, slow: float = 0.0, **config):
    """The real app in a child process (so the test's clients do not share its GIL); `config`: ServeConfig fields."""
    import os

    port = free_port()
    extra = "".join(f", {k}={v!r}" for k, v in config.items())
    code = SERVER_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), queue_size=queue_size, slow=slow, port=port, extra=extra)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc=proc)
        except TimeoutError:
            proc.kill()
            raise AssertionError("server process did not start:\n" + (proc.communicate()[0] or ""))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def display_text(tok, ids: list[int]) -> str:
    """What a user sees for completion ids: runs of ordinary tokens decoded as a whole, special tokens
    as the streaming decoder's display table says (e.g. `<<expr = result>>` for calculator calls)."""
    from nanochat.engine.streaming import SPECIAL_DISPLAY

    shown = {tok.special_id(name): text for name, text in SPECIAL_DISPLAY.items()}
    out, run = [], []
    for t in ids:
        if t in shown:
            out.append(tok.decode(run))
            out.append(shown[t])
            run = []
        else:
            run.append(t)
    out.append(tok.decode(run))
    return "".join(out)


def one_torch_thread():
    """Module fixture body: tiny models run fastest on one intra-op thread, and several OpenMP threads
    spin badly on a busy 2-core machine (100 ms per token instead of 2). Restores the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# /health timed from a child process (so that the test's own sockets, threads and GIL do not count against
# the server), until a line arrives on its stdin
POLLER = r"""
import json, sys, threading, time, httpx
url, lat, stop = sys.argv[1], [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
with httpx.Client(timeout=10) as c:
    c.get(url)
    print("ready", flush=True)
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            assert c.get(url).status_code == 200
        except httpx.TimeoutException:  # a stalled server: one poll as slow as the timeout
            pass
        lat.append(time.perf_counter() - t0)
        time.sleep(0.005)
print(json.dumps(lat))
"""


class HealthPoller:
    """Polls /health from a child process while the block runs; `latencies` (sorted) afterwards."""

    def __init__(self, url: str):
        self.url = url + "/health"

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", POLLER, self.url], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        import json

        out, _ = self.proc.communicate("stop\n", timeout=60)
        self.latencies = sorted(json.loads(out))

    @property
    def p99(self) -> float:
        return self.latencies[int(0.99 * (len(self.latencies) - 1))]

    def summary(self) -> str:
        slowest = [round(x * 1000, 1) for x in self.latencies[-5:]]
        return f"p99 {self.p99 * 1000:.1f} ms over {len(self.latencies)} polls (slowest {slowest} ms)"


class HealthRace:
    """/health of the server under test and of an idle control server (the same app, in its own process,
    started here), polled side by side over the same window. The control server meets the same busy
    machine (other work, the test's own clients) but does no work of its own, so its latencies are what
    "responsive" means on this machine right now. `check` wants the server's p99 within `ratio` x the
    control's (or `floor_s`), and its slowest poll within `max_ratio` x the control's slowest (or
    `max_floor_s`): a poller waits out a stall, so a stalled event loop costs one slow poll, not 1% of them,
    and only the maximum sees it (generation on the event loop stalls /health for seconds)."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        control = self._stack.enter_context(process_server())
        self.server = self._stack.enter_context(HealthPoller(self.url))
        self.control = self._stack.enter_context(HealthPoller(control))
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def summary(self) -> str:
        return f"/health {self.server.summary()}; idle control server {self.control.summary()}"

    def check(self, floor_s: float, ratio: float, max_floor_s: float = 1.0, max_ratio: float = 5.0, min_polls: int = 50) -> None:
        server, control = self.server.latencies, self.control.latencies
        assert min(len(server), len(control)) >= min_polls, self.summary()
        limit = max(floor_s, ratio * self.control.p99)
        assert self.server.p99 <= limit, f"{self.summary()}: p99 over the limit of {limit * 1000:.0f} ms"
        limit = max(max_floor_s, max_ratio * control[-1])
        assert server[-1] <= limit, f"{self.summary()}: slowest poll over the limit of {limit * 1000:.0f} ms"
