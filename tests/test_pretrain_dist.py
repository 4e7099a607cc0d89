"""Two processes under torchrun with gloo on CPU: training runs, every rank saves its optimizer shard and
data-loader state, and a resumed 2-process run continues with exactly the losses of the first."""

from __future__ import annotations

import shutil

from nanochat.common import checkpoint as ck
from tests.conftest import run_cli
from tests.train_helpers import TINY, install_tokenizer, train_losses


def test_two_process_gloo_run_trains_and_resumes(nanochat_home):
    install_tokenizer(nanochat_home)
    args = ["pretrain", *TINY, "--nproc", "2", "--num-iterations", "8", "--save-every", "4", "--eval-every", "8", "--eval-tokens", "512"]
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torchrun" in r.stdout and "× 2" in r.stdout
    assert r.stdout.count("step 00008/00008") == 1  # rank 0 alone prints
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    first = train_losses(run_dir)
    assert sorted(first) == list(range(8))
    manifest = ck.verify_checkpoint(run_dir / "step_000004")
    assert manifest["world_size"] == 2
    assert {"optim_rank0.safetensors", "optim_rank1.safetensors", "rank0.json", "rank1.json"} <= set(manifest["files"])
    _, s0 = ck.load_rank_state(run_dir / "step_000004", 0)
    _, s1 = ck.load_rank_state(run_dir / "step_000004", 1)
    (l0,), (l1,) = s0["loader"]["shards"], s1["loader"]["shards"]  # one micro-step per step: one data shard each
    assert (l0["rank"], l0["world_size"]) == (0, 2) and (l1["rank"], l1["world_size"]) == (1, 2)
    assert l0["position"] != l1["position"]  # ranks read different row groups

    # resume from step 4 in two new processes: steps 4..7 again, the same losses
    shutil.rmtree(run_dir / "step_000008")
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming d2 from step 4" in r.stdout
    again = train_losses(run_dir)
    assert max(abs(again[s] - first[s]) for s in range(4, 8)) == 0.0
    assert ck.find_latest("base", "d2").step == 8

    # one process with the default (CPU: one micro-batch a process) total batch would read the data as other
    # streams than the 2 processes did: one clear line saying what the checkpoint had (tests/test_multinode.py
    # resumes with the same total batch)
    r = run_cli("pretrain", *TINY, "--nproc", "1", "--num-iterations", "12", "--eval-every", "-1")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--total-batch-size 512 --device-batch-size 4 as it had, or on 2 processes in all" in r.stderr


def _rank_pids(home, local_rank: int) -> list[int]:
    """Processes of this test's run (its NANOCHAT_HOME) that torchrun started as `local_rank`."""
    import os

    want = {f"LOCAL_RANK={local_rank}".encode(), f"NANOCHAT_HOME={home}".encode()}
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = set(open(f"/proc/{entry}/environ", "rb").read().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                pids.append(int(entry))
    return pids


def test_killed_rank_ends_the_run_without_a_hang_and_resume_continues(nanochat_home):
    # a rank dies (SIGKILL, as an OOM kill would): the other must not hang in a collective; the whole
    # run ends within 60 s, and `--resume auto` continues from the newest valid checkpoint
    import os
    import signal
    import subprocess
    import sys
    import time

    install_tokenizer(nanochat_home)
    args = ["pretrain", *TINY, "--nproc", "2", "--num-iterations", "400", "--save-every", "2", "--eval-every", "-1"]
    proc = subprocess.Popen([sys.executable, "-m", "nanochat", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = nanochat_home / "checkpoints" / "base" / "d2"
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "step_000004").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 4"
            time.sleep(0.2)
        victims = _rank_pids(nanochat_home, 1)
        assert victims, "rank 1 not found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=90)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert proc.returncode != 0, out[-2000:]
    print(f"run ended {took:.1f} s after rank 1 was killed")
    assert took < 60, f"the run took {took:.0f} s to end after a rank died"
    assert not _rank_pids(nanochat_home, 0), "rank 0 outlived the run"
    newest = ck.find_latest("base", "d2").step
    assert newest >= 4
    r = run_cli("pretrain", *TINY, "--nproc", "2", "--num-iterations", str(newest + 2), "--save-every", "2", "--eval-every", "-1", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming d2 from step {newest}" in r.stdout
    assert ck.find_latest("base", "d2").step == newest + 2


def test_two_processes_and_one_with_accumulation_train_alike(nanochat_home):
    # the same total batch split as 2 processes x 1 micro-step or 1 process x 2 micro-steps sees the
    # same rows (MicroStepLoader), so the losses agree to float32 reduction-order noise
    install_tokenizer(nanochat_home)
    common = [*TINY, "--num-iterations", "5", "--total-batch-size", "512", "--eval-every", "-1"]
    for tag, nproc in (("two", "2"), ("one", "1")):
        r = run_cli("pretrain", *common, "--nproc", nproc, "--model-tag", tag, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = train_losses(nanochat_home / "checkpoints" / "base" / "two")
    one = train_losses(nanochat_home / "checkpoints" / "base" / "one")
    assert sorted(two) == sorted(one) == list(range(5))
    assert max(abs(two[s] - one[s]) for s in range(5)) < 1e-5, (two, one)
    assert len(set(two.values())) == 5  # the losses move: the comparison is not of constants
