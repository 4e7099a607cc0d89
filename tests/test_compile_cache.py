"""torch.compile's caches live under the nanochat home, and the step clock keeps the first (compiling) step apart."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from nanochat.common.compile_cache import use_compile_cache
from nanochat.train import loop


def test_caches_go_under_the_home_folder_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_HOME", str(tmp_path / "home"))
    env: dict = {}
    cache = use_compile_cache(env)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "cache" / "compile" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "home" / "cache" / "compile" / "triton")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1" and cache.inductor.is_dir() and not cache.warm
    (cache.inductor / "fxgraph").mkdir()
    assert use_compile_cache({}).warm  # a second run finds the first run's graphs
    mine = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}
    cache = use_compile_cache(mine)
    assert cache.inductor == tmp_path / "mine" and mine["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor on CPU needs a C++ compiler")
def test_torch_compile_writes_its_graphs_into_the_home_cache(tmp_path):
    # a fresh interpreter: Inductor reads its folder when it first compiles, which must come after use_compile_cache
    code = textwrap.dedent(
        """
        import torch
        from nanochat.common.compile_cache import use_compile_cache
        cache = use_compile_cache()
        torch.set_num_threads(1)
        f = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        x = torch.randn(8)
        assert torch.equal(f(x), torch.relu(x) * 2 + 1)
        print(cache.inductor)
        """
    )
    env = {**os.environ, "NANOCHAT_HOME": str(tmp_path)}
    for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    inductor = tmp_path / "cache" / "compile" / "inductor"
    assert r.stdout.strip().endswith(str(inductor))
    assert any(p.is_file() for p in inductor.rglob("*")), "Inductor wrote nothing into the home folder's cache"


def test_step_clock_keeps_the_first_step_apart(monkeypatch):
    ticks = iter([0.0, 30.0, 30.0, 30.5, 30.5, 31.0])  # start/stop pairs: a 30 s first step, then two of 0.5 s
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(ticks))
    clock = loop.StepClock(warmup=1)
    for i in range(3):
        clock.start("cpu")
        clock.stop("cpu", i)
    assert clock.first_step_s == 30.0
    assert clock.total == pytest.approx(1.0) and clock.timed_steps == 2
