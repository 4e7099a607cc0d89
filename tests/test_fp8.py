"""FP8 matmuls (model/fp8.py, `pretrain --fp8`): against float32 matmuls and autograd, on CPU (torch's
_scaled_mm runs there too; the speed is the GPU's business, measured by benchmarks)."""

import pytest
import torch
import torch.nn.functional as F

from nanochat.model.fp8 import E4M3, E5M2, fp8_linear, fp8_supported, quantize


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("dtype,bits", [(E4M3, 3), (E5M2, 2)])
def test_quantize_round_trip_keeps_the_mantissa_bits(dtype, bits):
    torch.manual_seed(0)
    t = torch.randn(64, 64) * 3.0
    q, inv = quantize(t, dtype)
    assert q.dtype == dtype and inv.dtype == torch.float32 and inv.dim() == 0
    back = q.float() * inv
    assert float(t.abs().max()) == pytest.approx(float(back.abs().max()), rel=2.0**-bits)  # the amax lands on the top
    big = t.abs() > t.abs().max() / 64  # (tiny values meet the format's subnormals)
    assert float(((back - t).abs() / t.abs())[big].max()) <= 2.0 ** -(bits + 1) + 1e-6  # round to nearest: half a unit


def test_forward_and_gradients_match_float32_within_fp8_error():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 64, requires_grad=True)
    w = (torch.randn(96, 64) / 8).requires_grad_()
    y = fp8_linear(x, w)
    ref_x, ref_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.linear(ref_x, ref_w)
    assert y.shape == ref.shape == (4, 8, 96)
    assert 0 < _rel(y, ref) < 0.06  # FP8 (3 mantissa bits) changes the product, but only a little
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    assert 0 < _rel(x.grad, ref_x.grad) < 0.12 and 0 < _rel(w.grad, ref_w.grad) < 0.12  # e5m2 gradients: 2 mantissa bits
    assert w.grad.dtype == w.dtype and x.grad.dtype == x.dtype


def test_shapes_the_kernels_cannot_take_fall_back_to_the_exact_matmul():
    x, w = torch.randn(3, 5, 24), torch.randn(40, 24)  # 24 and 40 are not multiples of 16
    assert torch.equal(fp8_linear(x, w), F.linear(x, w))


def test_a_model_with_fp8_trains_near_the_exact_one_and_evaluates_exactly():
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    config = GPTConfig.from_depth(2, vocab_size=256, sequence_len=32, head_dim=16)
    exact, fp8 = build_model(config, "cpu", seed=0), build_model(config, "cpu", seed=0)
    for model in (exact, fp8):  # the output projections start at zero: give the blocks something to say
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for m in model.fp8_linears():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
    fp8.use_fp8()
    assert len(fp8.fp8_linears()) == 12 and not fp8.lm_head.fp8
    torch.manual_seed(1)
    idx = torch.randint(0, 256, (2, 32))
    tgt = torch.randint(0, 256, (2, 32))
    loss_exact, loss_fp8 = exact(idx, tgt), fp8(idx, tgt)
    assert loss_fp8.item() != loss_exact.item() and loss_fp8.item() == pytest.approx(loss_exact.item(), rel=0.02)
    loss_exact.backward()
    loss_fp8.backward()
    for (name, a), b in zip(exact.named_parameters(), fp8.parameters()):
        if a.dim() == 2 and a.grad is not None and a.grad.norm() > 0:  # the matrices (a scalar's tiny gradient is all noise)
            assert _rel(b.grad, a.grad) < 0.25, name
    with torch.no_grad():  # evaluation and sampling never use FP8
        assert torch.equal(fp8(idx, tgt), exact(idx, tgt))


def test_fp8_needs_a_recent_nvidia_gpu():
    assert "drop --fp8" in fp8_supported("cpu") and "on cpu" in fp8_supported("cpu")
