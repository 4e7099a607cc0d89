"""The depth dial: batch, LRs, weight decay, horizon and schedules against REFERENCE §2.4 and §4.

The parameter counts are computed here from the model dimensions alone (width 64·depth rounded up to
128, MHA heads of 128, value embeddings on alternating layers including the last, ve_gate of
n_kv_head × 12), independently of nanochat.model; the expected values are the reference's derived table.
"""

from __future__ import annotations

import math

import pytest

from nanochat.common.errors import NanochatError
from nanochat.optim import schedules
from nanochat.train.scaling import ModelFacts, ScalingOptions, grad_accum_steps, plan_training

VOCAB, SEQ = 32768, 2048


def dims(depth: int) -> dict:
    dim = math.ceil(depth * 64 / 128) * 128
    heads = dim // 128
    ve_layers = sum(1 for i in range(depth) if i % 2 == (depth - 1) % 2)
    matrices = depth * 12 * dim * dim + ve_layers * heads * 12  # q,k,v,proj (4d²) + MLP (8d²) + ve gates
    lm_head = VOCAB * dim
    scalars = 2 * depth + 24 + 1  # resid/x0 lambdas, smear gate (24) + smear lambda (backout off by default)
    total = VOCAB * dim + lm_head + ve_layers * VOCAB * dim + matrices + scalars
    # FLOPs/token: 6 × matmul params + 12·h·q·window per layer; SSSL with S = T/4 and the last layer full
    pattern = [("SSSL"[i % 4]) for i in range(depth)]
    pattern[-1] = "L"
    attn = sum(12 * heads * 128 * (SEQ // 4 if c == "S" else SEQ) for c in pattern)
    flops = 6 * (matrices + lm_head + 24) + attn
    return dict(dim=dim, heads=heads, scaling=matrices + lm_head, total=total, flops=flops)


def facts(depth: int) -> ModelFacts:
    d = dims(depth)
    return ModelFacts(depth, d["dim"], d["heads"], d["total"], d["scaling"], dims(12)["scaling"], d["flops"])


# depth: d_model, heads, total params (M), scaling N (M), FLOPs/token, auto B, LR scale, WD, iters@12, iters@8
TABLE = {
    12: (768, 6, 286.3, 110.1, 7.60e8, 524_288, 1.000, 0.280, 2520, 1680),
    16: (1024, 8, 536.9, 234.9, 1.59e9, 524_288, 1.000, 0.131, 5376, 3584),
    20: (1280, 10, 896.5, 435.2, 2.89e9, 1_048_576, 1.414, 0.100, 4980, 3320),
    24: (1536, 12, 1384.1, 729.8, 4.78e9, 1_048_576, 1.414, 0.060, 8352, 5568),
    26: (1664, 13, 1681.8, 918.4, 5.99e9, 1_048_576, 1.414, 0.048, 10510, 7007),
    32: (2048, 16, 2818.6, 1677.7, 1.08e10, 2_097_152, 2.000, 0.037, 9600, 6400),
}


@pytest.mark.parametrize("depth", sorted(TABLE))
def test_reference_derived_table(depth):
    dim, heads, total_m, n_m, flops, batch, scale, wd, iters12, iters8 = TABLE[depth]
    d = dims(depth)
    # the independent counts reproduce the table's model columns (sanity of this test's arithmetic)
    assert (d["dim"], d["heads"]) == (dim, heads)
    assert round(d["total"] / 1e6, 1) == total_m
    assert round(d["scaling"] / 1e6, 1) == n_m
    assert float(f"{d['flops']:.3g}") == flops
    for ratio, iters in ((12, iters12), (8, iters8)):
        opts = ScalingOptions(device_batch_size=32, max_seq_len=SEQ, world_size=8, target_param_data_ratio=ratio)
        plan = plan_training(opts, facts(depth))
        assert plan.total_batch_size == batch
        assert plan.grad_accum_steps == batch // (32 * SEQ * 8)
        assert round(plan.lr_scale, 3) == scale
        assert plan.matrix_lr == pytest.approx(0.02 * plan.lr_scale)
        assert plan.embedding_lr == pytest.approx(0.3 * plan.lr_scale)
        assert plan.unembedding_lr == pytest.approx(0.008 * plan.lr_scale)
        assert plan.scalar_lr == pytest.approx(0.5 * plan.lr_scale)
        assert plan.weight_decay == pytest.approx(wd, abs=6e-4)  # the table's d26 entry rounds 0.04747 up
        assert plan.num_iterations == iters
        assert plan.total_tokens == iters * batch


def test_speedrun_row_flops():
    # d24 at ratio 8: 5,568 steps, 5.84B tokens, 2.79e19 FLOPs
    plan = plan_training(ScalingOptions(device_batch_size=16, max_seq_len=SEQ, world_size=8, target_param_data_ratio=8), facts(24))
    assert plan.num_iterations == 5568
    assert round(plan.total_tokens / 1e9, 2) == 5.84
    assert f"{plan.total_flops:.2e}" == "2.79e+19"


def test_horizon_precedence_and_overrides():
    f = facts(12)
    base = dict(device_batch_size=32, max_seq_len=SEQ, world_size=1)
    # explicit iterations win over FLOPs and ratio
    assert plan_training(ScalingOptions(**base, num_iterations=7, target_flops=1e30), f).num_iterations == 7
    # target FLOPs: round(F / (flops/token · B))
    target = 1e18
    expect = round(target / (f.flops_per_token * 524288))
    plan = plan_training(ScalingOptions(**base, target_flops=target), f)
    assert plan.num_iterations == expect and plan.horizon_source.startswith("--target-flops")
    # explicit batch: no power law, LRs scaled by √(2^18 / 2^19)
    plan = plan_training(ScalingOptions(**base, total_batch_size=2**18, matrix_lr=0.04), f)
    assert plan.total_batch_size == 2**18 and plan.grad_accum_steps == 4
    assert plan.matrix_lr == pytest.approx(0.04 / math.sqrt(2))
    assert plan.weight_decay == pytest.approx(0.28 / math.sqrt(2))
    # lr_scaling off: values used as given
    plan = plan_training(ScalingOptions(**base, total_batch_size=2**18, lr_scaling=False, weight_decay=0.1), f)
    assert plan.matrix_lr == 0.02 and plan.weight_decay == 0.1


def test_cpu_auto_batch_is_one_micro_batch():
    f = facts(12)
    plan = plan_training(ScalingOptions(device_batch_size=8, max_seq_len=256, world_size=2, num_iterations=10), f, power_law_batch=False)
    assert plan.total_batch_size == 8 * 256 * 2 and plan.grad_accum_steps == 1
    assert plan.lr_scale == pytest.approx(math.sqrt(4096 / 2**19))


def test_bad_batch_math_is_a_one_line_error():
    with pytest.raises(NanochatError, match="not a multiple"):
        grad_accum_steps(1000, 8, 256, 1)
    with pytest.raises(NanochatError, match="horizon"):
        plan_training(ScalingOptions(num_iterations=-1, target_flops=-1, target_param_data_ratio=-1), facts(12))


def test_lr_schedule_hand_values():
    n = 100  # warmdown = round(0.65·100) = 65 steps: full LR through step 35
    lr = lambda it: schedules.lr_multiplier(it, n, warmup_steps=10, warmdown_ratio=0.65, final_lr_frac=0.05)
    assert lr(0) == pytest.approx(0.1)
    assert lr(9) == pytest.approx(1.0)
    assert lr(35) == 1.0
    assert lr(36) == pytest.approx(64 / 65 + (1 / 65) * 0.05)
    assert lr(100) == pytest.approx(0.05)
    assert lr(100 - 65 // 2 - 1) == pytest.approx((33 / 65) + (32 / 65) * 0.05)


def test_muon_momentum_and_weight_decay_schedules():
    n = 2000  # warmdown from step 700
    m = lambda it: schedules.muon_momentum(it, n, warmdown_ratio=0.65)
    assert m(0) == pytest.approx(0.85)
    assert m(200) == pytest.approx(0.91)
    assert m(400) == pytest.approx(0.97) and m(700) == pytest.approx(0.97)
    assert m(2000) == pytest.approx(0.90)
    assert m(700 + 650) == pytest.approx(0.935)
    assert schedules.weight_decay(0, n, 0.2) == pytest.approx(0.2)
    assert schedules.weight_decay(1000, n, 0.2) == pytest.approx(0.1)
    assert schedules.weight_decay(2000, n, 0.2) == pytest.approx(0.0, abs=1e-12)
