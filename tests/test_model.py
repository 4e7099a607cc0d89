"""The GPT: the depth dial, the reference's published sizes, and the forward against a naive float64 re-implementation."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat.common.errors import NanochatError
from nanochat.model import GPT, GPTConfig, build_model


def tiny_config(**kw) -> GPTConfig:
    args = dict(sequence_len=32, vocab_size=100, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, window_pattern="SL")
    args.update(kw)
    return GPTConfig(**args)


def perturbed(model: GPT, seed: int = 0) -> GPT:
    """Zero-initialised projections make attention/MLP invisible; give every weight some signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


# ---------------------------------------------------------------------------------------------- config


def test_depth_dial_matches_the_reference_widths():
    for depth, width, heads in [(12, 768, 6), (20, 1280, 10), (24, 1536, 12), (26, 1664, 13), (1, 128, 1)]:
        c = GPTConfig.from_depth(depth, vocab_size=32768, sequence_len=2048)
        assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim) == (depth, width, heads, heads, 128)
    tiny = GPTConfig.from_depth(2, vocab_size=300, sequence_len=64, aspect_ratio=32, head_dim=32, n_kv_head=1)
    assert (tiny.n_embd, tiny.n_head, tiny.n_kv_head, tiny.padded_vocab_size) == (64, 2, 1, 320)


def test_windows_quarter_context_rounded_to_128_and_last_layer_full():
    c = GPTConfig.from_depth(12, 32768, 2048)
    assert c.window_sizes() == [512, 512, 512, 2048] * 3
    c = GPTConfig.from_depth(6, 32768, 1000, window_pattern="SL")
    assert c.window_sizes() == [256, 1000, 256, 1000, 256, 1000]  # ceil(250/128)*128
    c = GPTConfig.from_depth(5, 32768, 2048, window_pattern="SSSL")
    assert c.window_sizes() == [512, 512, 512, 2048, 2048]  # the last layer is forced long
    assert GPTConfig.from_depth(4, 100, 64, aspect_ratio=16, head_dim=16).window_sizes() == [16, 16, 16, 64]
    assert GPTConfig.from_depth(2, 100, 2, aspect_ratio=16, head_dim=16).window_sizes() == [1, 2]
    assert GPTConfig.from_depth(4, 100, 64, aspect_ratio=16, head_dim=16, window_pattern="L").window_sizes() == [64] * 4


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_embd=30), "divisible by n_head"),
        (dict(n_kv_head=3), "kv head"),
        (dict(window_pattern="SXL"), "window pattern"),
        (dict(n_layer=0), "positive integer"),
        (dict(n_embd=12, n_head=4, n_kv_head=2), "odd"),
    ],
)
def test_bad_configs_are_one_line_errors(kw, match):
    with pytest.raises(NanochatError, match=match):
        tiny_config(**kw)


def test_config_roundtrips_through_a_dict():
    c = tiny_config()
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(NanochatError, match="unknown keys"):
        GPTConfig.from_dict({**c.to_dict(), "n_experts": 8})


# ---------------------------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    "depth,total,scaling,flops",
    # the reference's derived sizes (docs/reference.md; vocab 32768, T 2048, SSSL)
    [(12, 286.3e6, 110.1e6, 7.60e8), (20, 896.5e6, 435.2e6, 2.89e9), (24, 1384.1e6, 729.8e6, 4.78e9), (32, 2818.6e6, 1677.7e6, 1.08e10)],
)
def test_param_counts_and_flops_match_the_reference_table(depth, total, scaling, flops):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(depth, 32768, 2048))
    counts = model.param_counts()
    assert counts["total"] == pytest.approx(total, rel=1e-3)
    assert counts["scaling"] == model.scaling_params() == pytest.approx(scaling, rel=1e-3)
    assert model.flops_per_token() == pytest.approx(flops, rel=5e-3)


def test_param_counts_by_group_hand_computed():
    c = tiny_config()  # d=32, 4 heads of 8, 2 kv heads, 3 layers, vocab 100 -> 128, VE on layers 0 and 2
    with torch.device("meta"):
        m = GPT(c)
    counts = m.param_counts()
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 2 * 4 * 32 * 32  # q, k+v, proj, fc+proj
    assert counts["wte"] == 128 * 32
    assert counts["lm_head"] == 128 * 32
    assert counts["value_embeds"] == 2 * 128 * 16
    assert counts["matrices"] == 3 * per_layer + 2 * (2 * 12)  # + two ve_gates (2 kv heads x 12 channels)
    assert counts["scalars"] == 6 + 24 + 1  # resid + x0 lambdas; smear gate (24 channels), smear lambda (backout is off by default)
    assert counts["total"] == sum(p.numel() for p in m.parameters())
    # flops: 6 x (matrices + lm_head) + 12 * heads * head_dim * window per layer (windows 8, 32, 32 at T=32)
    assert m.flops_per_token() == 6 * (counts["matrices"] + counts["lm_head"]) + 12 * 4 * 8 * (8 + 32 + 32)
    assert m.kv_bytes_per_token(torch.bfloat16) == 2 * 3 * 2 * 8 * 2
    # inference: 2 x matmul params + 4 * heads * head_dim * min(window, context); context 20 -> windows 8, 20, 20
    assert m.inference_flops_per_token(20) == 2 * (counts["matrices"] + counts["lm_head"]) + 4 * 4 * 8 * (8 + 20 + 20)
    assert m.kv_bytes_per_token(torch.float32) == 2 * 3 * 2 * 8 * 4


# ---------------------------------------------------------------------------------------------- init and forward


def test_init_follows_the_reference():
    m = build_model(GPTConfig.from_depth(4, 100, 32, aspect_ratio=16, head_dim=16), "cpu", seed=0)
    for block in m.h:
        assert block.attn.c_proj.weight.abs().max() == 0 and block.mlp.c_proj.weight.abs().max() == 0
        s = math.sqrt(3) * 64**-0.5
        assert block.attn.c_q.weight.abs().max() <= s and block.attn.c_q.weight.abs().max() > 0.9 * s
        assert block.mlp.c_fc.weight.abs().max() <= 0.4 * s
    assert sorted(m.value_embeds.keys()) == ["1", "3"]  # alternating, including the last layer
    assert m.h[3].attn.ve_gate is not None and m.h[2].attn.ve_gate is None
    torch.testing.assert_close(m.resid_lambdas.detach(), torch.tensor([1.15, 1.15 - 0.1 / 3, 1.15 - 0.2 / 3, 1.05]))
    torch.testing.assert_close(m.x0_lambdas.detach(), torch.tensor([0.2, 0.15, 0.1, 0.05]))
    assert abs(m.wte.weight.std().item() - 0.8) < 0.05
    assert all(p.dtype == torch.float32 for p in m.parameters())
    # with the output projections at zero, the first logits are just the head on the normed embedding
    idx = torch.randint(0, 100, (2, 8))
    assert m(idx).abs().max() < 0.1


def naive_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """An independent float64 re-implementation of the forward, written from docs/reference.md ("Model")."""
    c = model.config
    P = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, Hkv, D, T = c.n_head, c.n_kv_head, c.head_dim, idx.shape[1]

    def rms(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)

    def rope(x):  # x (T, heads, D); pair channel i with channel i + D/2, rotate by -theta
        out = x.clone()
        for pos in range(T):
            for i in range(D // 2):
                theta = pos / (100000.0 ** (2 * i / D))
                a, b = x[pos, :, i], x[pos, :, i + D // 2]
                out[pos, :, i] = a * math.cos(theta) + b * math.sin(theta)
                out[pos, :, i + D // 2] = -a * math.sin(theta) + b * math.cos(theta)
        return out

    windows = c.window_sizes()
    logits_rows = []
    for row in idx:
        e = rms(P["wte.weight"][row])
        x = e.clone()
        if c.smear:
            for t in range(1, T):
                x[t] = e[t] + P["smear_lambda"][0] * torch.sigmoid(e[t, :24] @ P["smear_gate.weight"][0]) * e[t - 1]
        x0 = x
        for layer in range(c.n_layer):
            pre = f"h.{layer}."
            x = P["resid_lambdas"][layer] * x + P["x0_lambdas"][layer] * x0
            h = rms(x)
            q = (h @ P[pre + "attn.c_q.weight"].T).view(T, H, D)
            k = (h @ P[pre + "attn.c_k.weight"].T).view(T, Hkv, D)
            v = (h @ P[pre + "attn.c_v.weight"].T).view(T, Hkv, D)
            if f"value_embeds.{layer}.weight" in P:
                ve = P[f"value_embeds.{layer}.weight"][row].view(T, Hkv, D)
                gate = 3 * torch.sigmoid(h[:, :12] @ P[pre + "attn.ve_gate.weight"].T)
                v = v + gate[:, :, None] * ve
            q, k = 1.2 * rms(rope(q)), 1.2 * rms(rope(k))
            y = torch.zeros(T, H, D, dtype=torch.float64)
            for head in range(H):
                kv = head // (H // Hkv)
                for t in range(T):
                    keys = [j for j in range(T) if j <= t and t - j <= windows[layer]]
                    scores = torch.stack([q[t, head] @ k[j, kv] for j in keys]) / math.sqrt(D)
                    w = torch.softmax(scores, 0)
                    y[t, head] = sum(wi * v[j, kv] for wi, j in zip(w, keys))
            if c.attn_gate:
                y = y * (2 * torch.sigmoid(h[:, :12] @ P[pre + "attn.attn_gate.weight"].T))[:, :, None]
            x = x + y.reshape(T, H * D) @ P[pre + "attn.c_proj.weight"].T
            h = rms(x)
            x = x + torch.relu(h @ P[pre + "mlp.c_fc.weight"].T) ** 2 @ P[pre + "mlp.c_proj.weight"].T
            if layer == c.n_layer // 2:
                mid = x
        if c.backout:
            x = x - P["backout_lambda"][0] * mid
        logits = (rms(x) @ P["lm_head.weight"].T)[:, : c.vocab_size]
        logits_rows.append(15 * torch.tanh(logits / 15))
    return torch.stack(logits_rows)


@pytest.mark.parametrize("smear,backout,attn_gate", [(True, True, False), (False, False, False), (True, True, True)])
def test_forward_matches_a_naive_float64_reference(smear, backout, attn_gate):
    c = tiny_config(sequence_len=12, smear=smear, backout=backout, attn_gate=attn_gate)  # windows: layer 0 short (3), layers 1-2 full
    assert c.window_sizes() == [3, 12, 12]
    m = perturbed(build_model(c, "cpu", seed=0))
    if smear:
        with torch.no_grad():
            m.smear_lambda.fill_(0.9)  # well away from its zero init, so the smear path is visible
    idx = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    got = m(idx)
    assert got.dtype == torch.float32 and got.shape == (2, 12, 100)
    torch.testing.assert_close(got.double(), naive_forward(m, idx), atol=2e-5, rtol=1e-4)


def _block_input(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The smeared embedding x0 of one row: block 0 receives (resid_lambdas[0] + x0_lambdas[0]) * x0."""
    captured = {}
    def hook(module, args):
        captured["x"] = args[0].detach().clone()  # returns None: the block's inputs stay as they are

    handle = model.h[0].register_forward_pre_hook(hook)
    model(idx)
    handle.remove()
    return captured["x"][0] / (model.resid_lambdas[0].item() + model.x0_lambdas[0].item())


def test_smear_gate_on_three_tokens_by_hand():
    """x[t] += lambda * sigmoid(w . x[t, :24]) * x[t-1], computed by hand on 3-token inputs."""
    c = GPTConfig(sequence_len=8, vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=24, backout=False)
    m = build_model(c, "cpu", seed=0)
    with torch.no_grad():
        m.wte.weight.zero_()
        m.wte.weight[1, 0] = 1.0  # token 1: channel 0
        m.wte.weight[2, 1] = m.wte.weight[2, 2] = 1.0  # token 2: channels 1 and 2
        m.wte.weight[3, 3] = 2.0  # token 3: channel 3
        m.smear_lambda.fill_(0.5)
        m.smear_gate.weight.zero_()
        m.smear_gate.weight[0, 0] = 1.0  # the gate reads channel 0 only
    r = 24**0.5  # RMS-normed, a row with one nonzero channel holds sqrt(24) there
    e1, e2, e3 = torch.zeros(24), torch.zeros(24), torch.zeros(24)
    e1[0], e2[1], e2[2], e3[3] = r, r / 2**0.5, r / 2**0.5, r
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # tokens 2 and 3 have 0 in channel 0: their gates are sigmoid(0) = 1/2
    want = torch.stack([e1, e2 + 0.5 * 0.5 * e1, e3 + 0.5 * 0.5 * e2])
    torch.testing.assert_close(_block_input(m, torch.tensor([[1, 2, 3]])), want, atol=1e-5, rtol=1e-5)
    # token 1 has sqrt(24) in channel 0: a gate of sigmoid(sqrt(24))
    got = _block_input(m, torch.tensor([[3, 1, 1]]))
    torch.testing.assert_close(got, torch.stack([e3, e1 + 0.5 * sig(r) * e3, e1 + 0.5 * sig(r) * e1]), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        m.smear_lambda.zero_()  # the init: no smear at all
    torch.testing.assert_close(_block_input(m, torch.tensor([[1, 2, 3]])), torch.stack([e1, e2, e3]), atol=1e-5, rtol=1e-5)


def test_backout_subtracts_the_mid_residual_by_hand():
    """Backout takes backout_lambda x (the residual after block n_layer // 2) off before the final norm. Three
    layers: blocks 0 and 1 are identities (zero output projections), block 2's MLP writes a vector that is not
    parallel to x0, so the subtraction changes the direction the head reads; checked against a hand computation."""
    c = GPTConfig(sequence_len=8, vocab_size=64, n_layer=3, n_head=1, n_kv_head=1, n_embd=24, smear=False, backout=True)
    m = build_model(c, "cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.h[2].mlp.c_proj.weight.normal_(0, 0.5, generator=g)
        m.lm_head.weight.normal_(0, 1.0, generator=g)
        m.backout_lambda.fill_(0.7)
    idx = torch.tensor([[4, 5, 6]])
    P = {k: v.detach() for k, v in m.state_dict().items()}
    rms = lambda v: v / v.pow(2).mean(-1, keepdim=True).add(torch.finfo(torch.float32).eps).sqrt()  # noqa: E731
    x0 = rms(P["wte.weight"][idx[0]])
    x = x0
    for i in range(3):
        x = P["resid_lambdas"][i] * x + P["x0_lambdas"][i] * x0
        if i == 2:
            x = x + torch.relu(rms(x) @ P["h.2.mlp.c_fc.weight"].T) ** 2 @ P["h.2.mlp.c_proj.weight"].T
        if i == 1:
            mid = x
    h = rms(x - 0.7 * mid)
    want = 15 * torch.tanh((h @ P["lm_head.weight"].T)[:, :64] / 15)
    torch.testing.assert_close(m(idx)[0], want, atol=1e-5, rtol=1e-5)
    without = 15 * torch.tanh((rms(x) @ P["lm_head.weight"].T)[:, :64] / 15)
    assert (m(idx)[0] - without).abs().max() > 1e-2  # the check above can tell backout from no backout


def test_old_checkpoint_configs_load_without_smear_and_backout():
    d = tiny_config(backout=True).to_dict()
    assert d["smear"] is True and d["backout"] is True
    old = {k: v for k, v in d.items() if k not in ("smear", "backout")}
    c = GPTConfig.from_dict(old)
    assert c.smear is False and c.backout is False
    with torch.device("meta"):
        m = GPT(c)
    assert "smear_lambda" not in m.state_dict() and "backout_lambda" not in m.state_dict()


def test_loss_is_cross_entropy_ignoring_minus_one():
    m = perturbed(build_model(tiny_config(), "cpu", seed=0))
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 100, (3, 16), generator=gen)
    targets = torch.randint(0, 100, (3, 16), generator=gen)
    targets[0, :5] = -1
    targets[2, 10:] = -1
    logits = m(idx).double()
    logp = logits - torch.logsumexp(logits, -1, keepdim=True)
    keep = targets >= 0
    per_token = torch.zeros(3, 16, dtype=torch.float64)
    per_token[keep] = -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    none = m(idx, targets, loss_reduction="none")
    assert none.shape == (3, 16)
    torch.testing.assert_close(none.double(), per_token, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(idx, targets).double(), per_token[keep].mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(NanochatError, match="loss_reduction"):
        m(idx, targets, loss_reduction="sum")


def test_logits_are_softcapped_and_causal():
    m = build_model(tiny_config(), "cpu", seed=0)
    with torch.no_grad():
        m.lm_head.weight.mul_(1e4)  # huge raw logits
        perturbed(m)
    idx = torch.randint(0, 100, (1, 16))
    logits = m(idx)
    assert logits.abs().max() <= 15.0 and logits.abs().max() > 14.0
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 100
    other = m(changed)
    torch.testing.assert_close(other[:, :10], logits[:, :10])
    assert not torch.allclose(other[:, 10:], logits[:, 10:])


def test_last_only_logits_are_the_last_position():
    m = perturbed(build_model(tiny_config(), "cpu", seed=0))
    idx = torch.randint(0, 100, (2, 9))
    last = m(idx, last_only=True)
    assert last.shape == (2, 1, 100)
    torch.testing.assert_close(last, m(idx)[:, -1:])
    with pytest.raises(NanochatError, match="last_only"):
        m(idx, idx, last_only=True)


def test_meta_build_without_init_then_load_reproduces_the_model():
    c = tiny_config()
    a = perturbed(build_model(c, "cpu", seed=3))
    b = build_model(c, "cpu", init=False)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 100, (2, 10))
    torch.testing.assert_close(a(idx), b(idx), atol=0, rtol=0)
    # the same seed gives the same weights; rotary tables are buffers, not in the state dict
    c2 = build_model(c, "cpu", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(c2.state_dict().values(), build_model(c, "cpu", seed=3).state_dict().values()))
    assert "cos" not in a.state_dict()


def test_gradients_reach_every_parameter():
    m = perturbed(build_model(tiny_config(), "cpu", seed=0))
    idx = torch.randint(0, 100, (2, 16))
    m(idx, idx).backward()
    for name, p in m.named_parameters():
        rows = p.grad[:100] if name in ("wte.weight", "lm_head.weight") or name.startswith("value_embeds") else p.grad
        assert rows.abs().sum() > 0, name
    assert m.lm_head.weight.grad[100:].abs().sum() == 0  # padded vocab rows are sliced away


def test_attention_gate_by_hand():
    """One head whose attention output is v of the only key: the gate scales it by 2*sigmoid(w . x[:12])."""
    c = GPTConfig(sequence_len=8, vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=16, smear=False, backout=False, attn_gate=True)
    m = build_model(c, "cpu", seed=0)
    assert torch.count_nonzero(m.h[0].attn.attn_gate.weight) == 0  # starts closed at exactly 1
    a = m.h[0].attn
    captured = {}
    handle = a.c_proj.register_forward_pre_hook(lambda mod, args: captured.__setitem__("y", args[0].detach().clone()))
    with torch.no_grad():
        m.wte.weight.zero_()
        m.wte.weight[5, 0] = 1.0  # token 5 normed: sqrt(16) = 4 in channel 0
        m.x0_lambdas.zero_(); m.resid_lambdas.fill_(1.0)
        a.c_v.weight.zero_(); a.c_v.weight[3, 0] = 0.5  # v = 0.5 * 4 = 2 in channel 3 (block input rms-normed: 4)
        m.value_embeds["0"].weight.zero_()
        m(torch.tensor([[5]]))
        ungated = captured["y"].clone()
        a.attn_gate.weight[0, 0] = 0.25  # gate = 2 * sigmoid(0.25 * 4) = 2 * sigmoid(1)
        m(torch.tensor([[5]]))
    handle.remove()
    want = torch.zeros(16); want[3] = 2.0
    torch.testing.assert_close(ungated[0, 0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured["y"][0, 0], want * 2 / (1 + math.exp(-1.0)), atol=1e-5, rtol=1e-5)
