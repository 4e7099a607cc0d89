"""The optimizer in one process: AdamW parity with torch, Polar Express orthogonality, Muon details, schedules, state."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat.model import GPTConfig, build_model
from nanochat.optim import build_optimizer, flatten_state_dict, unflatten_state_dict
from nanochat.optim import schedules
from nanochat.optim.muon import muon_step, polar_express
from nanochat.train.pretrain_config import optimizer_settings


def tiny_model(seed=0):
    config = GPTConfig.from_depth(2, 120, 16, aspect_ratio=32, head_dim=32, n_kv_head=1)
    return build_model(config, "cpu", seed=seed)


def fake_grads(model, gen):
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_adamw_groups_match_torch_adamw_over_10_steps():
    model = tiny_model()
    opt = build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.28)
    adam_groups = [g for g in opt.param_groups if g["kind"] == "adamw"]
    assert [g["name"] for g in adam_groups] == ["lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas", "smear"]
    smear = adam_groups[-1]["params"]
    assert [p.shape for p in smear] == [(1, 24), (1,)]  # smear gate, smear lambda (no backout lambda: off by default)
    s = (64 / 768) ** -0.5  # width scaling of the embedding/head LRs
    expected = {"lm_head": (0.008 * s, (0.8, 0.96), 0.01), "wte": (0.3 * s, (0.8, 0.995), 0.001),
                "value_embeds": (0.15 * s, (0.8, 0.995), 0.01), "resid_lambdas": (0.005, (0.8, 0.95), 0.05),
                "x0_lambdas": (0.5, (0.96, 0.95), 0.0), "smear": (0.2, (0.8, 0.95), 0.0)}  # fmt: skip
    clones, ref_groups = {}, []
    for g in adam_groups:
        lr, betas, wd = expected[g["name"]]
        assert g["lr"] == pytest.approx(lr) and tuple(g["betas"]) == betas and g["weight_decay"] == wd and g["eps"] == 1e-10
        ps = [torch.nn.Parameter(p.detach().clone()) for p in g["params"]]
        clones.update(zip(map(id, g["params"]), ps))
        ref_groups.append({"params": ps, "lr": lr, "betas": betas, "eps": 1e-10, "weight_decay": wd})
    ref = torch.optim.AdamW(ref_groups)
    gen = torch.Generator().manual_seed(0)
    for step in range(10):
        fake_grads(model, gen)
        lrm = 1.0 - 0.05 * step
        opt.set_schedule(lrm)
        for rg, g in zip(ref.param_groups, adam_groups):
            rg["lr"] = expected[g["name"]][0] * lrm
            for p in g["params"]:
                clones[id(p)].grad = p.grad.clone()
        opt.step()
        ref.step()
    for g in adam_groups:
        for p in g["params"]:
            # to 1e-6, absolute or relative: the embedding LR here is ~1 (0.3 x (64/768)^-0.5), so wte entries
            # reach |p| ~ 5, where a float32 ulp is 4.8e-7 and the two kernels' roundings differ by an ulp or two
            torch.testing.assert_close(p.detach(), clones[id(p)].detach(), atol=1e-6, rtol=1e-6)
    start = tiny_model()
    assert all((p - q).abs().max() > 1e-3 for p, q in zip(model.parameters(), start.parameters()))


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (32, 512), (6, 12)])
def test_polar_express_orthogonalises_wide_and_tall(shape):
    """Band: every singular value of the result in [0.85, 1.15], singular vectors those of the input."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    x = polar_express(g)
    sv = torch.linalg.svdvals(x)
    assert sv.min() >= 0.85 and sv.max() <= 1.15, (sv.min(), sv.max())
    U, _, Vh = torch.linalg.svd(g.double(), full_matrices=False)
    inner = U.T @ x.double() @ Vh.T  # diagonal when x = U f(S) V^T
    off = inner - torch.diag(torch.diagonal(inner))
    assert off.abs().max() < 1e-3
    # without the polynomial steps the normalised input is far from orthogonal: the test can fail
    one_step = torch.linalg.svdvals(polar_express(g, steps=1))
    assert one_step.min() < 0.85 or one_step.max() > 1.15


def test_polar_express_on_a_stack_treats_each_matrix_alone():
    g = torch.randn(3, 16, 40, generator=torch.Generator().manual_seed(2))
    g[1] *= 1000.0
    x = polar_express(g)
    for i in range(3):
        torch.testing.assert_close(x[i], polar_express(g[i]), atol=1e-5, rtol=1e-4)


def _one_muon_update(p0, grad, wd, **kw):
    p = p0.clone()
    K, rows, cols = p.shape
    buf = torch.zeros_like(p)
    v2 = torch.zeros(K, rows, 1) if rows >= cols else torch.zeros(K, 1, cols)
    args = dict(lr=torch.tensor(0.1), momentum=torch.tensor(0.0), weight_decay=torch.tensor(wd), beta2=torch.tensor(0.9))
    args.update(kw)
    muon_step(p, grad, buf, v2, **args)
    return p - p0


def test_muon_update_size_tall_boost_and_cautious_decay():
    gen = torch.Generator().manual_seed(3)
    for rows, cols, boost in [(32, 32, 1.0), (128, 32, 2.0), (32, 128, 1.0)]:
        p0 = torch.randn(2, rows, cols, generator=gen)
        grad = torch.randn(2, rows, cols, generator=gen)
        delta = _one_muon_update(p0, grad, wd=0.0)
        # Muon+ sets ||U||_F = sqrt(min(rows, cols)) and NorMuon keeps the norm; lr 0.1 times the tall boost
        norms = delta.norm(dim=(-2, -1))
        torch.testing.assert_close(norms, torch.full((2,), 0.1 * boost * math.sqrt(min(rows, cols))), rtol=1e-4, atol=0)
        # cautious weight decay: p -= lr_eff * wd * p only where the update u and p agree in sign
        delta_wd = _one_muon_update(p0, grad, wd=0.5)
        u = -delta / (0.1 * boost)
        mask = (u * p0) >= 0
        torch.testing.assert_close(delta_wd - delta, -0.1 * boost * 0.5 * p0 * mask, atol=1e-6, rtol=1e-5)
        assert 0.2 < mask.float().mean() < 0.8
    # descent: the update points against the gradient
    assert (delta * grad).sum() < 0


def test_nesterov_momentum_uses_the_buffer():
    """With momentum mu the orthogonalised direction is that of lerp(g, buf, mu), buf = lerp(buf0, g, 1-mu)."""
    gen = torch.Generator().manual_seed(4)
    p0 = torch.randn(1, 16, 16, generator=gen)
    g = torch.randn(1, 16, 16, generator=gen)
    buf0 = torch.randn(1, 16, 16, generator=gen)
    p, buf, v2 = p0.clone(), buf0.clone(), torch.zeros(1, 16, 1)
    hp = dict(lr=torch.tensor(0.1), momentum=torch.tensor(0.9), weight_decay=torch.tensor(0.0), beta2=torch.tensor(0.9))
    muon_step(p, g, buf, v2, **hp)
    expected_buf = 0.9 * buf0 + 0.1 * g
    torch.testing.assert_close(buf, expected_buf)
    direction = 0.1 * g + 0.9 * expected_buf
    p2, buf2, v22 = p0.clone(), torch.zeros_like(buf0), torch.zeros(1, 16, 1)
    muon_step(p2, direction, buf2, v22, **{**hp, "momentum": torch.tensor(0.0)})
    torch.testing.assert_close(p, p2, atol=1e-5, rtol=1e-5)


def test_muon_groups_one_per_shape_with_schedule():
    model = tiny_model()
    opt = build_optimizer(model, matrix_lr=0.02, embedding_lr=0.3, unembedding_lr=0.008, scalar_lr=0.5, weight_decay=0.28)
    muon = {g["name"]: g for g in opt.param_groups if g["kind"] == "muon"}
    # d=64, 2 heads of 32, 1 kv head: q/proj 64x64 (x2 layers), k/v 32x64, fc 256x64, mlp proj 64x256, ve_gate 1x12
    assert {n: len(g["params"]) for n, g in muon.items()} == {
        "muon_64x64": 4, "muon_32x64": 4, "muon_1x12": 1, "muon_256x64": 2, "muon_64x256": 2}  # fmt: skip
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    opt.set_schedule(0.5, muon_momentum=0.9, weight_decay=0.1)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.5 * g["initial_lr"])
        if g["kind"] == "muon":
            assert (g["momentum"], g["weight_decay"]) == (0.9, 0.1)


def test_state_dict_resume_continues_exactly():
    gen_data = torch.Generator().manual_seed(5)
    batches = torch.randint(0, 120, (5, 4, 17), generator=gen_data)

    def run(resume_at=None):
        model = tiny_model(seed=1)
        opt = build_optimizer(model, **optimizer_settings())
        for step in range(5):
            model(batches[step, :, :-1], batches[step, :, 1:]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step == resume_at:
                tensors, meta = flatten_state_dict(opt.state_dict())
                assert all(isinstance(t, torch.Tensor) for t in tensors.values())
                import json

                meta = json.loads(json.dumps(meta))  # metadata must survive JSON
                opt = build_optimizer(model, **optimizer_settings())
                opt.load_state_dict(unflatten_state_dict(tensors, meta))
        return model.state_dict()

    straight, resumed = run(), run(resume_at=2)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=0, rtol=0)


def test_schedules_hand_computed():
    n = 1000  # warmdown starts at 1000 - 650 = 350
    assert schedules.lr_multiplier(0, n) == pytest.approx(1 / 40)
    assert schedules.lr_multiplier(39, n) == 1.0
    assert schedules.lr_multiplier(349, n) == 1.0
    assert schedules.lr_multiplier(350, n) == 1.0
    assert schedules.lr_multiplier(675, n) == pytest.approx(1 - 0.95 * 0.5)
    assert schedules.lr_multiplier(1000, n) == pytest.approx(0.05)
    # the 1-sqrt warmdown: a quarter of the way through it, the LR has fallen by sqrt(1/4) = 1/2 of its way down
    assert schedules.lr_multiplier(350 + 650 // 4, n, shape="sqrt") == pytest.approx(1 - 0.95 * (162 / 650) ** 0.5)
    assert schedules.lr_multiplier(350 + 650 // 4, n, shape="sqrt") < schedules.lr_multiplier(350 + 650 // 4, n)
    assert schedules.lr_multiplier(1000, n, shape="sqrt") == pytest.approx(0.05)
    assert schedules.lr_multiplier(200, n, shape="sqrt") == 1.0
    with pytest.raises(ValueError, match="cosine"):
        schedules.lr_multiplier(500, n, shape="cosine")
    m = 2000  # warmdown starts at 700
    assert schedules.muon_momentum(0, m) == pytest.approx(0.85)
    assert schedules.muon_momentum(200, m) == pytest.approx(0.91)
    assert schedules.muon_momentum(400, m) == pytest.approx(0.97)
    assert schedules.muon_momentum(699, m) == pytest.approx(0.97)
    assert schedules.muon_momentum(1350, m) == pytest.approx(0.935)
    assert schedules.muon_momentum(2000, m) == pytest.approx(0.90)
    assert schedules.weight_decay(0, n, 0.28) == pytest.approx(0.28)
    assert schedules.weight_decay(500, n, 0.28) == pytest.approx(0.14)
    assert schedules.weight_decay(1000, n, 0.28) == pytest.approx(0.0)


def test_sft_and_rl_schedules_by_hand():
    from nanochat.optim import schedules

    # SFT: x init_lr_frac 0.02; flat until the warmdown (last half), linear to final 0
    assert schedules.sft_lr_multiplier(0.5, 0.02, 0.0, 0.5, 0.0) == pytest.approx(0.02)
    assert schedules.sft_lr_multiplier(0.75, 0.02, 0.0, 0.5, 0.0) == pytest.approx(0.01)
    assert schedules.sft_lr_multiplier(1.0, 0.02, 0.0, 0.5, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert schedules.sft_lr_multiplier(1.7, 1.0, 0.0, 0.5, 0.2) == pytest.approx(0.2)  # past the end: clamped
    assert schedules.sft_lr_multiplier(0.05, 1.0, 0.1, 0.5, 0.0) == pytest.approx(0.5)  # halfway up the warmup
    assert [schedules.sft_muon_momentum(s) for s in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert [schedules.rl_lr_multiplier(s, 20) for s in (0, 5, 19)] == pytest.approx([1.0, 0.75, 0.05])
