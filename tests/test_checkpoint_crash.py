"""Crash safety: SIGKILL at random moments during saves never leaves a corrupt checkpoint under a step
name, the newest valid checkpoint always loads, and `--resume auto` continues from it.

Part 1 (32 kills): a tiny saver process that does nothing but save checkpoints back to back is killed
with SIGKILL after a random delay. To keep 32 kills cheap, one server process imports torch once and
forks a fresh saver per round; the test kills the saver and inspects the folder after each kill.
Part 2: the real trainer, saving every step, is killed three times mid-run; each restart resumes from
the newest valid checkpoint, and the losses of the whole crash-ridden run equal an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from nanochat.common import checkpoint as ck
from tests.conftest import run_cli
from tests.train_helpers import TINY, install_tokenizer, train_losses

SAVER_SERVER = r"""
import os, sys, signal
import torch
torch.set_num_threads(1)
from pathlib import Path
from nanochat.common import checkpoint as ck
d = Path(sys.argv[1])
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:  # the saver: continue after the newest valid checkpoint, save until killed
        found = ck.latest_valid(d, report=None)
        step = found[0] + 1 if found else 1
        while True:
            v = float(step)
            ck.save_checkpoint(
                d, step, model_state={"w": torch.full((512, 512), v), "b": torch.full((300,), v)},
                meta={"model_config": {}, "check": step}, optimizer_state={"state": {0: {"m": torch.full((128, 128), v)}}},
                rank_state={"step": step}, keep_last=3, barrier=lambda: None,
            )
            step += 1
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _check_folder(d, previous: int) -> int:
    """Every step folder verifies; the newest loads and is self-consistent; steps never go back."""
    for _, p in ck._step_dirs(d):
        ck.verify_checkpoint(p)  # a step name only ever holds a complete checkpoint
    reports: list[str] = []
    found = ck.latest_valid(d, report=reports.append)
    assert found is not None and not reports
    step, path = found
    weights = ck.load_weights(path)
    assert (weights["w"] == step).all() and (weights["b"] == step).all()
    opt, state = ck.load_rank_state(path, 0)
    assert state == {"step": step} and (opt["state"][0]["m"] == step).all()
    assert ck.load_meta(path)["check"] == step
    assert step >= previous
    return step


def _wait_for_a_save_after(d, step: int, timeout: float = 180.0) -> None:
    """Until a step folder newer than `step` is published: progress is watched, not timed, so a loaded machine
    (slower saves) only makes the round longer."""
    deadline = time.monotonic() + timeout
    while max((s for s, _ in ck._step_dirs(d)), default=0) <= step:
        assert time.monotonic() < deadline, f"no save after step {step} in {timeout:.0f} s"
        time.sleep(0.002)


def test_sigkill_during_saves_never_corrupts(tmp_path):
    d = tmp_path / "ckpts"
    server = subprocess.Popen([sys.executable, "-c", SAVER_SERVER, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = random.Random(1234)
    newest, interrupted = 0, 0
    try:
        for _ in range(32):
            server.stdin.write("go\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            _wait_for_a_save_after(d, newest)  # every round completes at least one save ...
            time.sleep(rng.uniform(0.0, 0.25))  # ... and is killed at a random point of the ones after it
            os.kill(pid, signal.SIGKILL)
            assert server.stdout.readline().strip() == "reaped"
            interrupted += any(p.name.startswith(".tmp-") for p in d.iterdir())
            before, newest = newest, _check_folder(d, newest)
            assert newest > before  # the save seen before the kill is the newest valid one (or a later one)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert newest >= 32  # saves kept making progress across the kills
    assert interrupted >= 5  # and many kills landed inside a save (they left a temporary folder)


def test_trainer_killed_during_saves_resumes_from_newest_valid(nanochat_home, tmp_path):
    install_tokenizer(nanochat_home)
    args = [sys.executable, "-m", "nanochat", "pretrain", *TINY, "--num-iterations", "24", "--save-every", "1", "--keep-last", "2", "--eval-every", "-1"]
    rng = random.Random(7)
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    expect_resume = None
    for _ in range(3):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        saves = 0
        for line in p.stdout:
            if expect_resume is not None and line.startswith("resuming"):
                assert f"from step {expect_resume} " in line, line
                expect_resume = None
            if line.startswith("saved step"):
                saves += 1
                if saves == 2:
                    time.sleep(rng.uniform(0.0, 0.3))
                    p.kill()  # SIGKILL: wherever it is, often inside the next save
                    break
        p.wait(timeout=60)
        assert expect_resume is None, "the restarted run did not resume from the newest valid checkpoint"
        info = ck.find_latest("base", "d2")
        assert info is not None
        expect_resume = info.step
    r = run_cli(*args[3:], timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"resuming d2 from step {expect_resume} " in r.stdout
    assert ck.find_latest("base", "d2").step == 24
    crashed = train_losses(run_dir)

    # an uninterrupted run gives the same losses at every step
    straight_home = tmp_path / "straight"
    install_tokenizer(straight_home)
    r = run_cli(*args[3:], env={"NANOCHAT_HOME": str(straight_home)}, timeout=600)
    assert r.returncode == 0
    straight = train_losses(straight_home / "checkpoints" / "base" / "d2")
    assert sorted(crashed) == sorted(straight) == list(range(24))
    assert max(abs(crashed[s] - straight[s]) for s in range(24)) == 0.0
