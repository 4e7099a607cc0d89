"""Choosing the device batch from the GPU's memory: checked by hand on fake memory sizes."""

import pytest

from nanochat.common.errors import NanochatError
from nanochat.train.batch_choice import choose_device_batch

GiB = 2**30


def test_d26_fits_an_80gb_card_as_well_as_a_141gb_one():
    # d26 at T=2048: ~2.4 GiB of activations a row (what the dry run's estimate gives), 30 GiB of state;
    # 256 rows per process per step (524,288 tokens / 2048 on one GPU)
    h100 = choose_device_batch(256, 30 * GiB, 2.4 * GiB, 80 * GiB)
    h200 = choose_device_batch(256, 30 * GiB, 2.4 * GiB, 141 * GiB)
    # 0.85 x 80 - 30 = 38 GiB -> 15 rows fit -> largest divisor of 256 is 8; 0.85 x 141 - 30 = 89.85 -> 37 -> 32
    assert h100.device_batch_size == 8 and h200.device_batch_size == 32
    assert "8 rows" in h100.reason and "15 rows" in h100.reason


def test_the_total_batch_is_kept_divisible():
    # 96 rows a step, room for 40: the largest divisor of 96 that is <= 40 is 32
    assert choose_device_batch(96, 0, 1 * GiB, 40 / 0.85 * GiB).device_batch_size == 32
    # room for more than the step has: all of it, capped by max_rows
    assert choose_device_batch(48, 0, 1, 10 * GiB).device_batch_size == 48
    assert choose_device_batch(512, 0, 1, 10 * GiB, max_rows=128).device_batch_size == 128


def test_a_model_that_fits_no_row_is_refused_with_the_fixes():
    with pytest.raises(NanochatError, match="--activation-checkpointing"):
        choose_device_batch(256, 70 * GiB, 2.4 * GiB, 80 * GiB)


def test_auto_resolves_by_hand_on_a_fake_gpu_and_to_the_default_elsewhere():
    from nanochat.train.pretrain import AUTO_ROWS, PretrainConfig, memory_estimate, resolve_device_batch
    from nanochat.train.scaling import ModelFacts  # noqa: F401  (the facts' type)
    from types import SimpleNamespace

    cfg = PretrainConfig(depth=12, device_batch_size=AUTO_ROWS, max_seq_len=2048, total_batch_size=524288, resume="never")
    facts = SimpleNamespace(total_params=10**8, depth=12, model_dim=768, scaling_params=10**8, ref_scaling_params=10**8,
                            flops_per_token=6 * 10**8)
    off_gpu, why = resolve_device_batch(cfg, facts, 32768, 1, "cpu")
    assert off_gpu.device_batch_size == 32 and "no GPU" in why
    # measured 1 GiB a row, 1.6 GB of state, a 40 GiB card: 0.85 x 40 GiB - state leaves room for 32 rows, and 32
    # divides the 256 rows of a 524,288-token step
    state = memory_estimate(facts, cfg, 32768, 2)[0]
    got, why = resolve_device_batch(cfg, facts, 32768, 1, "cuda", row_bytes=GiB, device_bytes=(32.5 * GiB + state) / 0.85)
    assert got.device_batch_size == 32 and "(measured)" in why
    got, _ = resolve_device_batch(cfg, facts, 32768, 1, "cuda", row_bytes=GiB, device_bytes=(31.5 * GiB + state) / 0.85)
    assert got.device_batch_size == 16  # 31 rows fit: the largest divisor of 256 below is 16
    explicit, why = resolve_device_batch(PretrainConfig(device_batch_size=8), facts, 32768, 1, "cuda", row_bytes=GiB, device_bytes=GiB)
    assert explicit.device_batch_size == 8 and why == "--device-batch-size"


def test_a_dry_run_says_its_choice_comes_from_the_estimate():
    from types import SimpleNamespace

    from nanochat.train.pretrain import AUTO_ROWS, PretrainConfig, resolve_device_batch

    cfg = PretrainConfig(depth=12, device_batch_size=AUTO_ROWS, max_seq_len=2048, total_batch_size=524288, resume="never")
    facts = SimpleNamespace(total_params=10**8, depth=12, model_dim=768, scaling_params=10**8, ref_scaling_params=10**8, flops_per_token=6 * 10**8)
    _, why = resolve_device_batch(cfg, facts, 32768, 1, "cuda", device_bytes=141 * GiB)
    assert "(estimated)" in why and "(measured)" not in why


def test_gpu_memory_cap_reads_the_environment(monkeypatch):
    from nanochat.common.errors import NanochatError
    from nanochat.common.memory import GIB, gpu_memory_cap

    total = 141 * GIB
    monkeypatch.delenv("NANOCHAT_GPU_MEMORY_GIB", raising=False)
    assert gpu_memory_cap(total) is None
    monkeypatch.setenv("NANOCHAT_GPU_MEMORY_GIB", "78")
    assert gpu_memory_cap(total) == 78 * GIB
    monkeypatch.setenv("NANOCHAT_GPU_MEMORY_GIB", "200")  # above the card: no cap
    assert gpu_memory_cap(total) is None
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv("NANOCHAT_GPU_MEMORY_GIB", bad)
        with pytest.raises(NanochatError, match="NANOCHAT_GPU_MEMORY_GIB=.* must be a positive number of GiB"):
            gpu_memory_cap(total)


def test_a_capped_80gb_card_gets_a_smaller_d26_batch_than_the_h200():
    """The decision at d26 under a 78 GiB cap against the whole 141 GiB card, from the plan's own estimates
    (a fake memory size on CPU, as the issue asks): both fit, the capped one with fewer rows."""
    import torch

    from nanochat.model.gpt import GPT
    from nanochat.train.pretrain import AUTO_ROWS, PretrainConfig, memory_estimate, model_config, model_facts, resolve_device_batch

    cfg = PretrainConfig(depth=26, device_batch_size=AUTO_ROWS, resume="never")
    with torch.device("meta"):
        facts = model_facts(cfg, GPT(model_config(cfg, 32768)), 32768)
    one = PretrainConfig(depth=26, device_batch_size=1)
    state, per_row = memory_estimate(facts, one, 32768, 2)
    chosen = {}
    for gib in (78, 141):
        c, why = resolve_device_batch(cfg, facts, 32768, 8, "cuda", row_bytes=per_row, device_bytes=gib * 2**30)
        rows = c.device_batch_size
        assert state + rows * per_row <= 0.85 * gib * 2**30 < state + 2 * rows * per_row or rows == 32  # the most that fit (a divisor)
        chosen[gib] = rows
    assert chosen[78] < chosen[141]


def test_auto_batch_of_a_resumed_run_is_its_checkpoints(monkeypatch):
    """A resumed run's data streams depend on its rows: auto keeps the checkpoint's, whatever the card (and
    --resume never measures afresh)."""
    import dataclasses

    import torch

    from nanochat.common import checkpoint as ck
    from nanochat.model.gpt import GPT
    from nanochat.train import pretrain
    from nanochat.train.pretrain import AUTO_ROWS, PretrainConfig, model_config, model_facts, resolve_device_batch

    cfg = PretrainConfig(depth=4, device_batch_size=AUTO_ROWS, max_seq_len=256, model_tag="t")
    with torch.device("meta"):
        facts = model_facts(cfg, GPT(model_config(cfg, 512)), 512)
    found = ck.CheckpointInfo(ck.checkpoint_dir("base", "t") / "step_000010", "base", "t", 10)
    monkeypatch.setattr(pretrain.ck, "find_latest", lambda kind, tag: found if (kind, tag) == ("base", "t") else None)
    monkeypatch.setattr(pretrain.ck, "load_meta", lambda path: {"device_batch_size": 12})
    c, why = resolve_device_batch(cfg, facts, 512, 1, "cuda", row_bytes=1.0, device_bytes=2**40)
    assert c.device_batch_size == 12 and "checkpoint being resumed" in why
    fresh, why = resolve_device_batch(dataclasses.replace(cfg, resume="never"), facts, 512, 1, "cuda", row_bytes=1.0, device_bytes=2**40)
    assert fresh.device_batch_size != 12 and "measured" in why
