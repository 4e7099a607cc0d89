"""Exact resume: 40 steps straight equal 20 steps + checkpoint + a NEW process + 20 steps, loss for loss
(max |Δ| = 0.0). Negative control: the same resume with the data-loader state not restored must differ.

The straight run saves at step 20 (`--save-every 20`); that checkpoint is copied into a fresh home and a
new process resumes from it with `--resume auto`. Saving has no side effects on the run, so the copied
checkpoint is exactly what a run that stopped at step 20 leaves behind.
"""

from __future__ import annotations

import shutil

from tests.conftest import run_cli
from tests.train_helpers import TINY, install_tokenizer, train_losses

ARGS = ["pretrain", *TINY, "--num-iterations", "40", "--eval-every", "-1", "--save-every", "20"]


def _resume_from(step_dir, home, *extra) -> dict[int, float]:
    install_tokenizer(home)
    target = home / "checkpoints" / "base" / "d2"
    target.mkdir(parents=True)
    shutil.copytree(step_dir, target / step_dir.name)
    r = run_cli(*ARGS, *extra, env={"NANOCHAT_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resuming d2 from step 20" in r.stdout
    return train_losses(target)


def test_resume_is_bit_exact_and_the_negative_control_differs(nanochat_home, tmp_path):
    install_tokenizer(nanochat_home)
    r = run_cli(*ARGS, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    straight_dir = nanochat_home / "checkpoints" / "base" / "d2"
    straight = train_losses(straight_dir)
    assert sorted(straight) == list(range(40))
    assert straight[39] < straight[0]  # it does train

    resumed = _resume_from(straight_dir / "step_000020", tmp_path / "home-resumed")
    assert sorted(resumed) == list(range(20, 40))  # metrics of the resumed run: only the steps it ran
    deltas = [abs(resumed[s] - straight[s]) for s in range(20, 40)]
    assert max(deltas) == 0.0, deltas

    # negative control: without the loader state the resumed run reads other batches, so the test notices
    control = _resume_from(straight_dir / "step_000020", tmp_path / "home-control", "--skip-restore", "loader")
    assert max(abs(control[s] - straight[s]) for s in range(20, 40)) > 0.0
