"""Every attention back end on this machine against a naive float64 reference (explicit mask, softmax)."""

from __future__ import annotations

import math

import pytest
import torch

from nanochat.common.errors import NanochatError
from nanochat.model import attention as A
from nanochat.model.kv_cache import KVCache


def naive(q, k, v, window, q_pos=None, k_len=None):
    """float64 softmax attention; q (B,Tq,H,D), k/v (B,Tk,Hkv,D); q_pos (B,Tq) absolute query positions."""
    q, k, v = q.double(), k.double(), v.double()
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    if q_pos is None:
        q_pos = torch.arange(Tq).expand(B, Tq)
    out = torch.zeros(B, Tq, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hkv)
            scores = q[b, :, h] @ k[b, :, kv].T / math.sqrt(D)  # (Tq, Tk)
            qp = q_pos[b].unsqueeze(1)
            j = torch.arange(Tk).unsqueeze(0)
            allowed = (j <= qp) & (qp - j <= window)
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[b, :, h] = torch.softmax(scores, -1) @ v[b, :, kv]
    return out


def cpu_backends():
    """sdpa trains on CPU; flex runs here too, forward only (torch has no CPU backward for it)."""
    return ["sdpa", "flex"]


def rand_qkv(B, T, H, Hkv, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, H, D, generator=g), torch.randn(B, T, Hkv, D, generator=g), torch.randn(B, T, Hkv, D, generator=g))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("window", [200, 63, 16, 5, 0])
def test_backend_matches_naive(backend, H, Hkv, window):
    T = 64
    q, k, v = rand_qkv(2, T, H, Hkv, 16)
    got = A.attention(q, k, v, window, backend)
    assert got.shape == q.shape
    torch.testing.assert_close(got.double(), naive(q, k, v, window), atol=2e-5, rtol=1e-4)


def test_window_zero_attends_only_to_itself():
    q, k, v = rand_qkv(1, 8, 2, 2, 4)
    torch.testing.assert_close(A.attention(q, k, v, 0, "sdpa"), v)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("window", [100, 6])
def test_cached_prefill_and_decode_with_per_row_lengths(backend, window):
    """Rows at different lengths: row 0 has 10 tokens, row 1 has 3 (its slots 3..9 are stale padding)."""
    B, H, Hkv, D, Tmax = 2, 4, 2, 8, 24
    q, k, v = rand_qkv(B, 16, H, Hkv, D, seed=5)
    cache = KVCache(B, n_layer=2, n_kv_head=Hkv, head_dim=D, max_len=Tmax)
    # prefill 10 tokens in both rows, then roll row 1 back to 3
    pos = cache.positions(10)
    A.attention_with_cache(q[:, :10], k[:, :10], v[:, :10], cache, 1, pos, window, backend)
    cache.advance(10)
    cache.set_lengths([10, 3])
    # now 4 new tokens in each row at positions 10..13 and 3..6
    pos = cache.positions(4)
    assert pos.tolist() == [[10, 11, 12, 13], [3, 4, 5, 6]]
    out = A.attention_with_cache(q[:, 10:14], k[:, 10:14], v[:, 10:14], cache, 1, pos, window, backend)
    cache.advance(4)
    assert cache.lengths.tolist() == [14, 7]
    for b, (n_old, n) in enumerate([(10, 14), (3, 7)]):
        keys = torch.cat([k[b : b + 1, :n_old], k[b : b + 1, 10:14]], 1)
        vals = torch.cat([v[b : b + 1, :n_old], v[b : b + 1, 10:14]], 1)
        ref = naive(q[b : b + 1, 10:14], keys, vals, window, q_pos=pos[b : b + 1])
        torch.testing.assert_close(out[b : b + 1].double(), ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(cache.k[1, b, :n], keys[0])  # stored where the positions say
    assert cache.k[0].abs().sum() == 0  # other layers untouched


def test_backend_selection(monkeypatch):
    assert A.available_backends("cpu") == ["sdpa"]
    assert A.default_backend("cpu") == "sdpa"
    assert "sdpa" in A.available_backends()
    monkeypatch.setenv("NANOCHAT_ATTENTION", "warp")
    with pytest.raises(NanochatError, match="not a back end"):
        A.default_backend("cpu")
    monkeypatch.setenv("NANOCHAT_ATTENTION", "fa3")
    with pytest.raises(NanochatError, match="not available"):
        A.default_backend("cpu")
    with pytest.raises(NanochatError, match="unknown attention"):
        A.attention(*rand_qkv(1, 4, 2, 2, 4), 4, "xformers")


def test_flex_refuses_cpu_backward_with_a_clear_error():
    q, k, v = rand_qkv(1, 16, 2, 2, 8)
    q.requires_grad_(True)
    with pytest.raises(NanochatError, match="sdpa"):
        A.attention(q, k, v, 4, "flex")
