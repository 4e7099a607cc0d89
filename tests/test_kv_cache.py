"""KV-cache decoding gives the logits of a full forward pass, for a depth-4 model with GQA and sliding windows."""

from __future__ import annotations

import pytest
import torch

from nanochat.common.errors import NanochatError
from nanochat.model import GPTConfig, KVCache, build_model


def model_with_signal(backend="sdpa", attn_gate=False):
    # depth 4, 4 query heads over 2 kv heads, windows [16, 16, 16, 64] at T=64
    config = GPTConfig.from_depth(4, 300, 64, aspect_ratio=16, head_dim=16, n_kv_head=2, attn_gate=attn_gate)
    m = build_model(config, "cpu", seed=0, attn_backend=backend)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        m.smear_lambda.fill_(0.8)  # open the smear gate: decode must read each row's previous token from the cache
    return m.eval()


@pytest.mark.parametrize("backend,read_all,attn_gate", [("sdpa", False, False), ("flex", False, False), ("sdpa", True, False), ("sdpa", False, True)])
@torch.no_grad()
def test_prefill_then_decode_matches_full_forward(backend, read_all, attn_gate):
    m = model_with_signal(backend, attn_gate)
    assert m.config.window_sizes() == [16, 16, 16, 64]
    idx = torch.randint(0, 300, (2, 50), generator=torch.Generator().manual_seed(2))
    full = m(idx)
    cache = KVCache.for_model(m, batch_size=2, max_len=64, read_all=read_all)
    pieces = [m(idx[:, :20], kv_cache=cache)]  # prefill, then one token at a time (past the 16-token window)
    for t in range(20, 50):
        pieces.append(m(idx[:, t : t + 1], kv_cache=cache))
    assert cache.lengths.tolist() == [50, 50]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)  # float32 rounding only


@torch.no_grad()
def test_right_padded_prefill_of_different_prompts():
    """Prompts of 12 and 5 tokens prefilled as one padded batch, then decoded together."""
    m = model_with_signal()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 300, (1, 30), generator=g), torch.randint(0, 300, (1, 23), generator=g)
    cache = KVCache.for_model(m, batch_size=2, max_len=40)
    padded = torch.zeros(2, 12, dtype=torch.long)
    padded[0], padded[1, :5] = a[0, :12], b[0, :5]
    logits = m(padded, kv_cache=cache)
    cache.set_lengths([12, 5])
    steps_a, steps_b = [logits[0, 11]], [logits[1, 4]]
    for t in range(18):
        out = m(torch.stack([a[0, 12 + t : 13 + t], b[0, 5 + t : 6 + t]]), kv_cache=cache)
        steps_a.append(out[0, 0])
        steps_b.append(out[1, 0])
    torch.testing.assert_close(torch.stack(steps_a), m(a)[0, 11:30], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(steps_b), m(b)[0, 4:23], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_one_prefill_copied_into_many_rows():
    m = model_with_signal()
    prompt = torch.randint(0, 300, (1, 10))
    one = KVCache.for_model(m, 1, 32)
    m(prompt, kv_cache=one)
    many = KVCache.for_model(m, 3, 32)
    many.copy_from(one)
    assert many.lengths.tolist() == [10, 10, 10]
    nxt = torch.tensor([[5], [6], [7]])
    out = m(nxt, kv_cache=many)
    for r in range(3):
        torch.testing.assert_close(out[r, 0], m(torch.cat([prompt[0], nxt[r]]).unsqueeze(0))[0, -1], atol=1e-4, rtol=1e-4)


def test_cache_errors_are_clear():
    m = model_with_signal()
    cache = KVCache.for_model(m, 1, 8)
    m(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(NanochatError, match="KV cache is full"):
        m(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(NanochatError, match="rows"):
        m(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(NanochatError, match="lengths"):
        cache.set_lengths([9])
    cache.reset()
    assert cache.lengths.tolist() == [0] and cache.max_filled == 0
    assert m.kv_bytes_per_token() == cache.k[:, 0, 0].numel() * 2 * cache.k.element_size()
