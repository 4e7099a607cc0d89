"""Checkpoint format: exact round trips without pickle, manifest checks, discovery, pruning, ranks."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
import torch

from nanochat.common import checkpoint as ck
from nanochat.common.errors import NanochatError


def tiny_model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    return model, opt


def train_steps(model, opt, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 50, (4, 8), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def save(directory, step, model, opt, **kw):
    return ck.save_checkpoint(
        directory, step, model_state=model.state_dict(), meta={"model_config": {"n": 1}}, optimizer_state=opt.state_dict(),
        rank_state={"loader": {"pos": step}, "rng": ck.capture_rng()}, **kw,
    )


def test_round_trip_continues_training_identically(tmp_path):
    model, opt = tiny_model_and_optimizer()
    train_steps(model, opt, 3, seed=1)
    path = save(tmp_path / "d1", 3, model, opt)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "meta.json", "model.safetensors", "optim_rank0.safetensors", "rank0.json"]
    # reference: keep training the original for 2 steps
    train_steps(model, opt, 2, seed=2)
    # second path: a fresh model and optimizer restored from disk, trained the same 2 steps
    model2, opt2 = tiny_model_and_optimizer(seed=99)
    model2.load_state_dict(ck.load_weights(path))
    opt_state, rank_state = ck.load_rank_state(path, 0)
    opt2.load_state_dict(opt_state)
    assert rank_state["loader"] == {"pos": 3}
    train_steps(model2, opt2, 2, seed=2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert ck.load_meta(path)["step"] == 3


def test_tree_encoding_is_exact_and_json_only():
    tree = {0: {"step": torch.tensor(5.0), "buf": torch.arange(6, dtype=torch.bfloat16).view(2, 3)}, "betas": (0.8, 0.95),
            "x": [float("inf"), -float("inf"), 0.1 + 0.2, None, True, 3], "dtype": torch.float32, "__weird__": 1}
    tensors: dict = {}
    enc = ck.encode_tree(tree, tensors)
    text = json.dumps(enc, allow_nan=False)  # strictly JSON: no NaN/inf literals, no pickle
    dec = ck.decode_tree(json.loads(text), tensors)
    assert set(dec) == {0, "betas", "x", "dtype", "__weird__"}
    assert dec["betas"] == (0.8, 0.95) and dec["dtype"] is torch.float32 and dec["__weird__"] == 1
    assert dec["x"][:2] == [float("inf"), -float("inf")] and dec["x"][2] == 0.1 + 0.2 and dec["x"][3:] == [None, True, 3]
    assert torch.equal(dec[0]["buf"], tree[0]["buf"]) and dec[0]["buf"].dtype == torch.bfloat16
    with pytest.raises(NanochatError):
        ck.encode_tree({"f": object()}, {})


def test_rng_states_restore_exactly(tmp_path):
    model, opt = tiny_model_and_optimizer()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(3), np.random.randn()  # leaves a cached gaussian in numpy
    path = save(tmp_path / "d1", 1, model, opt)
    expected = (random.random(), np.random.randn(), torch.rand(4))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    unrestored = (random.random(), np.random.randn(), torch.rand(4))
    ck.restore_rng(ck.load_rank_state(path, 0)[1]["rng"])
    got = (random.random(), np.random.randn(), torch.rand(4))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    # negative control: without the restore the draws differ
    assert unrestored[0] != expected[0] and not torch.equal(unrestored[2], expected[2])


def test_newest_valid_is_chosen_and_corruption_reported(tmp_path, nanochat_home):
    model, opt = tiny_model_and_optimizer()
    d = ck.checkpoint_dir("base", "d1")
    for step in (10, 20, 30):
        save(d, step, model, opt)
    assert ck.find_latest("base", "d1").step == 30
    # flip one byte in the newest weights: reported, skipped, step 20 used
    f = d / "step_000030" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    reports: list[str] = []
    info = ck.find_latest("base", "d1", report=reports.append)
    assert info.step == 20 and len(reports) == 1 and "sha256" in reports[0] and "step_000030" in reports[0]
    # a truncated optimizer shard in step 20, and a step 40 folder without a manifest (a crash before publish)
    g = d / "step_000020" / "optim_rank0.safetensors"
    g.write_bytes(g.read_bytes()[:-3])
    (d / "step_000040").mkdir()
    (d / "step_000040" / "meta.json").write_text("{}")
    reports.clear()
    info = ck.find_latest("base", "d1", report=reports.append)
    assert info.step == 10 and len(reports) == 3
    with pytest.raises(ck.CorruptCheckpoint):
        ck.resolve_checkpoint("base", "d1", step=30)
    assert ck.resolve_checkpoint("base", None, step=10).tag == "d1"


def test_no_checkpoint_is_a_clear_error(nanochat_home):
    with pytest.raises(NanochatError, match="nanochat pretrain"):
        ck.resolve_checkpoint("base")
    with pytest.raises(NanochatError, match="not a folder name"):
        ck.checkpoint_dir("base", "../x")


def test_keep_last_and_stale_temp_cleanup(tmp_path):
    model, opt = tiny_model_and_optimizer()
    d = tmp_path / "d1"
    d.mkdir()
    (d / ".tmp-step_000099").mkdir()  # left by a killed save
    for step in range(1, 6):
        save(d, step, model, opt, keep_last=2)
    assert sorted(p.name for p in d.iterdir()) == ["step_000004", "step_000005"]


def test_crash_between_renames_puts_the_old_folder_back(tmp_path):
    model, opt = tiny_model_and_optimizer()
    d = tmp_path / "d1"
    save(d, 5, model, opt)
    # publish_dir moves an existing folder aside before renaming the new one in; a kill between leaves this:
    (d / "step_000005").rename(d / ".old-step_000005.1234")
    save(d, 6, model, opt)
    assert sorted(p.name for p in d.iterdir()) == ["step_000005", "step_000006"]
    ck.verify_checkpoint(d / "step_000005")


def test_two_ranks_each_save_their_shard(tmp_path):
    d = tmp_path / "d1"
    barrier = threading.Barrier(2)
    models = [tiny_model_and_optimizer(seed=r) for r in range(2)]
    for m, o in models:
        train_steps(m, o, 1, seed=0)
    errors = []

    def worker(rank):
        m, o = models[rank]
        try:
            ck.save_checkpoint(d, 7, model_state=m.state_dict() if rank == 0 else None, meta={"x": 1} if rank == 0 else None,
                               optimizer_state=o.state_dict(), rank_state={"rank": rank}, rank=rank, world_size=2, barrier=barrier.wait)
        except Exception as e:  # surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    manifest = ck.verify_checkpoint(d / "step_000007")
    assert manifest["world_size"] == 2 and "optim_rank1.safetensors" in manifest["files"]
    opt_state, state = ck.load_rank_state(d / "step_000007", 1)
    assert state == {"rank": 1}
    exp = models[1][1].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt_state["state"][0]["exp_avg"], exp)
    with pytest.raises(NanochatError, match="--nproc 2"):
        ck.load_rank_state(d / "step_000007", 2)


RNG_CHILD = r"""
import random, sys
import numpy as np, torch
from nanochat.common import checkpoint as ck
d, mode = sys.argv[1], sys.argv[2]
if mode == "save":
    random.seed(5); np.random.seed(6); torch.manual_seed(7)
    random.random(); np.random.rand(3); torch.rand(5)
    ck.save_checkpoint(d, 1, model_state={"w": torch.zeros(1)}, meta={}, rank_state={"rng": ck.capture_rng()})
elif mode == "restore":
    ck.restore_rng(ck.load_rank_state(ck.latest_valid(__import__("pathlib").Path(d))[1], 0)[1]["rng"])
print(random.random(), float(np.random.rand()), float(torch.rand(1)))
"""


def test_rng_restore_across_processes(tmp_path):
    import subprocess
    import sys

    def child(mode):
        out = subprocess.run([sys.executable, "-c", RNG_CHILD, str(tmp_path / "c"), mode], capture_output=True, text=True, check=True)
        return out.stdout.split()

    saved = child("save")  # the draws the saving process makes right after its checkpoint
    assert child("restore") == saved
    assert child("none") != saved  # negative control: a new process without the restore draws otherwise


def test_consumers_pick_the_most_recently_written_tag(nanochat_home):
    import os

    model, opt = tiny_model_and_optimizer()
    a, b = ck.checkpoint_dir("base", "d2"), ck.checkpoint_dir("base", "d4")
    save(a, 100, model, opt)
    save(b, 5, model, opt)
    os.utime(a / "step_000100", (1e9, 1e9))  # d2 written long ago, d4 just now
    assert (ck.find_latest("base").tag, ck.find_latest("base").step) == ("d4", 5)
    # d4's only checkpoint damaged: reported, and d2's is used
    (b / "step_000005" / "meta.json").write_text("{}")
    reports: list[str] = []
    info = ck.find_latest("base", report=reports.append)
    assert (info.tag, info.step) == ("d2", 100) and len(reports) == 1
