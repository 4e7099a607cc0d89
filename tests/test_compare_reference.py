"""benchmarks/compare_reference.py: the bookkeeping a GPU call relies on (time to a target bpb, freeing scored
checkpoints), checked on hand-built logs and folders; the training itself runs only on the GPU machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cmp():
    spec = importlib.util.spec_from_file_location("compare_reference", HERE.parent / "benchmarks" / "compare_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_interpolates_between_scored_checkpoints(cmp):
    steps = {i: (0.0, 1.0) for i in range(0, 41)}  # 1 s a step; step 0 (compile) is not counted
    steps[0] = (0.0, 99.0)
    scores = {20: 1.0, 40: 0.5}
    # 0.75 lies halfway between steps 20 and 40 -> step 30 -> steps 1..29 summed = 29 s
    assert cmp.time_to(0.75, scores, steps) == pytest.approx(29.0)
    assert cmp.time_to(1.0, scores, steps) == pytest.approx(19.0)
    assert cmp.time_to(0.1, scores, steps) is None


def test_free_scored_checkpoints_keeps_the_final_step_and_reference_weights(cmp, tmp_path):
    ours = tmp_path / "ours" / "checkpoints" / "base" / "t"
    for s in (20, 40):
        (ours / f"step_{s:06d}").mkdir(parents=True)
        (ours / f"step_{s:06d}" / "model.safetensors").write_bytes(b"x")
    ref = tmp_path / "ref" / "base_checkpoints" / "d_cmp"
    ref.mkdir(parents=True)
    for name in ("model_000020.pt", "optim_000020_rank0.pt"):
        (ref / name).write_bytes(b"x")
    cmp.free_scored_checkpoints(tmp_path, "t", 40)  # nothing scored yet: nothing goes
    assert (ours / "step_000020").exists() and (ref / "optim_000020_rank0.pt").exists()
    (tmp_path / "scores_ours_t.json").write_text(json.dumps({"20": 1.0}))
    (tmp_path / "scores_ref.json").write_text(json.dumps({"20": 1.0}))
    cmp.free_scored_checkpoints(tmp_path, "t", 40)
    assert not (ours / "step_000020").exists() and (ours / "step_000040" / "model.safetensors").exists()
    assert (ref / "model_000020.pt").exists() and not (ref / "optim_000020_rank0.pt").exists()
