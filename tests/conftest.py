"""Test setup shared by the whole suite: the source tree on the path (also for subprocesses),
two CPU threads, an empty NANOCHAT_HOME per test, and GPU tests skipped without CUDA. For the server
tests: `one_torch_thread` (module-wide), and `server` / `client`, the real app over a tiny engine on a
uvicorn in a thread and the official openai client for it, shared by a module's tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = SRC + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.pop("NANOCHAT_DEBUG", None)
os.environ["NO_COLOR"] = "1"


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def nanochat_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty NANOCHAT_HOME (subprocesses inherit it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("NANOCHAT_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (see inference_helpers.one_torch_thread)."""
    from tests.inference_helpers import one_torch_thread as body

    yield from body()


@pytest.fixture(scope="module")
def server(one_torch_thread):
    """uvicorn in a thread on 127.0.0.1 over `make_app()` (one tiny engine); `.app` is the app."""
    from tests.inference_helpers import ThreadServer, make_app

    app = make_app()
    with ThreadServer(app) as s:
        s.app = app
        yield s


@pytest.fixture(scope="module")
def client(server):
    """The official openai client for `server`."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, input: str | None = None, cwd=None):
    """Run `python -m nanochat ARGS` in a fresh process (in folder `cwd`, default ours); returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "nanochat", *args], capture_output=True, text=True, env=full_env, timeout=timeout, input=input, cwd=cwd)
