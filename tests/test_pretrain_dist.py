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
    assert s0["loader"]["rank"] == 0 and s1["loader"]["rank"] == 1
    assert s0["loader"]["position"] != s1["loader"]["position"]  # ranks read different row groups

    # resume from step 4 in two new processes: steps 4..7 again, the same losses
    shutil.rmtree(run_dir / "step_000008")
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming d2 from step 4" in r.stdout
    again = train_losses(run_dir)
    assert max(abs(again[s] - first[s]) for s in range(4, 8)) == 0.0
    assert ck.find_latest("base", "d2").step == 8

    # a different process count cannot pick up per-rank state: one clear line
    r = run_cli("pretrain", *TINY, "--nproc", "1", "--num-iterations", "12", "--eval-every", "-1")
    assert r.returncode == 1 and "--nproc 2" in r.stderr and "Traceback" not in r.stderr
