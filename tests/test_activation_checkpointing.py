"""Activation checkpointing: the same loss and gradients as the plain backward, with less kept for it."""

import torch

from nanochat.model import GPTConfig, build_model


def _grads(checkpointed: bool, pack_bytes: list | None = None):
    torch.manual_seed(0)
    c = GPTConfig(sequence_len=16, vocab_size=96, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, window_pattern="SL", backout=True)
    m = build_model(c, "cpu", seed=1)
    with torch.no_grad():  # open the zero-initialised paths so every parameter takes part in the gradient
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    m.activation_checkpointing = checkpointed
    idx = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(2))
    tgt = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(3))

    def pack(t):
        if pack_bytes is not None:
            pack_bytes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m(idx, tgt)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def test_checkpointed_backward_gives_the_plain_gradients():
    torch.set_num_threads(2)
    loss_a, ga = _grads(False)
    loss_b, gb = _grads(True)
    assert torch.equal(loss_a, loss_b)
    assert ga.keys() == gb.keys() and all(g.abs().sum() > 0 for g in ga.values())
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_keeps_fewer_activations_for_the_backward():
    plain, ckpt = [], []
    _grads(False, plain)
    _grads(True, ckpt)
    # the blocks' internals (q, k, v, attention, MLP hidden, norms) are no longer kept: at least 3x less
    assert sum(ckpt) * 3 < sum(plain), (sum(ckpt), sum(plain))


def test_decode_and_eval_ignore_checkpointing():
    c = GPTConfig(sequence_len=16, vocab_size=96, n_layer=2, n_head=2, n_kv_head=1, n_embd=16)
    m = build_model(c, "cpu", seed=0)
    idx = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = m(idx)
        m.activation_checkpointing = True
        assert torch.equal(m(idx), want)


def test_memory_estimate_counts_one_block_when_checkpointing():
    from types import SimpleNamespace

    from nanochat.train.pretrain import PretrainConfig, memory_estimate

    facts = SimpleNamespace(total_params=10**6, depth=20, model_dim=1280)
    tokens = 8 * 2048
    logits = tokens * 32768 * 4 * 3
    _, plain = memory_estimate(facts, PretrainConfig(device_batch_size=8, max_seq_len=2048), 32768, 2)
    _, ckpt = memory_estimate(facts, PretrainConfig(device_batch_size=8, max_seq_len=2048, activation_checkpointing=True), 32768, 2)
    assert plain == tokens * 20 * 20 * 1280 * 2 + logits  # 20 d-wide bf16 tensors per layer
    assert ckpt == tokens * (20 + 20) * 1280 * 2 + logits  # one input per layer + one live block
