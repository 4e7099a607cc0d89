"""Causal attention behind one call, with three back ends chosen at run time.

    attention(q, k, v, window, backend)                       training / full forward
    attention_with_cache(q, k, v, cache, layer, positions, window, backend)   prefill and decode

Tensors are (batch, time, heads, head_dim) throughout; k and v may have fewer heads than q (GQA). `window` is
the left window: a query at position i sees keys at positions i-window .. i (window >= T-1 is plain causal).

Back ends:
- "fa3": FlashAttention-3 (`flash_attn_interface`, the Hopper build of flash-attention) when that package is
  installed and the GPU is sm_90; bf16/fp16 only. Native sliding windows, GQA and in-place KV-cache decode.
- "flex": PyTorch FlexAttention with block masks for the sliding windows, compiled on CUDA. Its full-causal
  layers go to SDPA's flash kernel on CUDA, which measured faster than FlexAttention for them on the H100
  (1.97 ms vs 2.55 ms per d12 forward, measured 2026-11), while its windowed layers beat SDPA's masked fallback ~3x.
  Inference on CUDA outside a compiled model (no grad) uses SDPA too: T changes almost every call there and
  each new T would recompile FlexAttention. On CPU FlexAttention runs eagerly, forward only (torch has no CPU
  backward for it).
- "sdpa": torch's scaled_dot_product_attention; is_causal for full layers, an explicit boolean mask for windows.

`default_backend()` picks fa3 > flex on CUDA and sdpa on CPU/MPS; NANOCHAT_ATTENTION=fa3|flex|sdpa overrides.
With a KV cache, fa3 reads and writes the cache in its kernel; the others write the new keys with
`KVCache.write` and run SDPA with a per-row mask over the filled part of the cache (also for "flex": decode
shapes change every step, and block masks would have to be rebuilt each time).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

from nanochat.common.errors import NanochatError

BACKENDS = ("fa3", "flex", "sdpa")
_FA3 = None  # the FA3 module once found; read as a plain global inside compiled graphs


@lru_cache(maxsize=1)
def _fa3_module():
    """The FA3 module if installed and usable on this GPU, else None (never raises)."""
    global _FA3
    if not torch.cuda.is_available():
        return None
    try:
        if torch.cuda.get_device_capability()[0] != 9:  # the Hopper kernels; other archs may load then crash
            return None
        import flash_attn_interface  # type: ignore[import-not-found]
    except Exception:
        return None
    _FA3 = flash_attn_interface
    return _FA3


@lru_cache(maxsize=1)
def _flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401

        return True
    except Exception:
        return False


def available_backends(device_type: str | None = None) -> list[str]:
    """Back ends that can train on `device_type` (default: cuda if present, else cpu), best first."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    found = []
    if device_type == "cuda":
        if _fa3_module() is not None:
            found.append("fa3")
        if _flex_available():
            found.append("flex")
    found.append("sdpa")
    return found


def default_backend(device_type: str | None = None) -> str:
    """NANOCHAT_ATTENTION if set (checked), else the first of available_backends()."""
    available = available_backends(device_type)
    forced = os.environ.get("NANOCHAT_ATTENTION", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise NanochatError(f"NANOCHAT_ATTENTION={forced!r} is not a back end; use one of {', '.join(BACKENDS)}")
        if forced not in available:
            raise NanochatError(f"NANOCHAT_ATTENTION={forced} is not available here (available: {', '.join(available)}); unset it")
        return forced
    return available[0]


def _check_backend(backend: str) -> None:
    if torch.compiler.is_compiling():  # checked in eager mode already (build_model); keep the graph clean
        return
    if backend not in BACKENDS:
        raise NanochatError(f"unknown attention back end {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "fa3" and _fa3_module() is None:
        raise NanochatError("attention back end fa3 asked for, but flash_attn_interface (FlashAttention-3) is not usable here; use flex or sdpa")


# ---------------------------------------------------------------------------------------------- SDPA


def _sdpa(q, k, v, window: int) -> torch.Tensor:
    T = q.shape[1]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]
    if window >= T - 1:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    else:
        i = torch.arange(T, device=q.device)
        delta = i.unsqueeze(1) - i.unsqueeze(0)  # query - key
        mask = (delta >= 0) & (delta <= window)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------- Flex

_block_masks: dict = {}
_compiled_flex = None


def _make_block_mask(T: int, window: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    return create_block_mask(sliding_causal, None, None, T, T, device=device)


def _block_mask(T: int, window: int, device: torch.device):
    if torch.compiler.is_compiling():  # traced into the caller's graph
        return _make_block_mask(T, window, device)
    key = (T, window, str(device))
    if key not in _block_masks:
        _block_masks[key] = _make_block_mask(T, window, device)
    return _block_masks[key]


def _flex(q, k, v, window: int) -> torch.Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    T = q.shape[1]
    on_cuda = q.device.type == "cuda"
    compiling = torch.compiler.is_compiling()
    if on_cuda and (window >= T - 1 or not (compiling or torch.is_grad_enabled())):
        # full causal: SDPA's flash kernel is faster (see module docstring). Inference outside a compiled
        # model (evals, sampling) sees a new T almost every call, and each would recompile flex: SDPA instead.
        return _sdpa(q, k, v, window)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask = _block_mask(T, window, q.device)
    gqa = q.shape[2] != k.shape[2]
    if compiling:  # inside the caller's compiled graph
        out = flex_attention(qt, kt, vt, block_mask=mask, enable_gqa=gqa)
    elif on_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        out = _compiled_flex(qt, kt, vt, block_mask=mask, enable_gqa=gqa)
    else:
        if torch.is_grad_enabled() and q.requires_grad:
            raise NanochatError("FlexAttention has no CPU backward; train on CPU with the sdpa back end")
        with warnings.catch_warnings():  # "flex_attention called without torch.compile()": deliberate on CPU
            warnings.simplefilter("ignore")
            out = flex_attention(qt, kt, vt, block_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------- FA3


def _fa3_out(result):
    return result[0] if isinstance(result, tuple) else result  # some FA3 builds also return the LSE


def _fa3_ok(q) -> bool:
    return _FA3 is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def _fa3(q, k, v, window: int) -> torch.Tensor:
    T = q.shape[1]
    w = -1 if window >= T - 1 else window
    return _fa3_out((_FA3 or _fa3_module()).flash_attn_func(q, k, v, causal=True, window_size=(w, 0)))


# ---------------------------------------------------------------------------------------------- public


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, backend: str = "sdpa") -> torch.Tensor:
    """Causal attention of q (B, T, H, D) over k, v (B, T, Hkv, D) with a left window; returns (B, T, H, D)."""
    _check_backend(backend)
    if backend == "fa3" and _fa3_ok(q):
        return _fa3(q, k, v, window)
    if backend == "flex" or (backend == "fa3" and q.is_cuda):  # fa3 with fp32 falls back to flex
        return _flex(q, k, v, window)
    return _sdpa(q, k, v, window)


def attention_with_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache,
    layer: int,
    positions: torch.Tensor,
    window: int,
    backend: str = "sdpa",
    masks: dict | None = None,
) -> torch.Tensor:
    """Append k, v (B, T_new, Hkv, D) to `cache` at `positions` (B, T_new) and attend from q (B, T_new, H, D).

    A query at position p sees the cached keys at positions p-window .. p of its own row. `masks`, a dict the
    caller keeps for one forward pass, lets the layers share each window's mask instead of rebuilding it.
    """
    _check_backend(backend)
    if backend == "fa3" and _fa3_ok(q) and cache.k.dtype == q.dtype:
        return _fa3_out(
            (_FA3 or _fa3_module()).flash_attn_with_kvcache(
                q, cache.k[layer], cache.v[layer], k=k, v=v, cache_seqlens=cache.lengths, causal=True, window_size=(window, 0)
            )
        )
    t_new = q.shape[1]
    cache.write(layer, k, v, positions)
    kk, vv = cache.filled(layer, t_new)
    mask = masks.get(window) if masks is not None else None
    if mask is None:
        slots = torch.arange(kk.shape[1], device=q.device)
        qpos = positions.unsqueeze(-1)  # (B, T_new, 1)
        mask = ((slots <= qpos) & (qpos - slots <= window)).unsqueeze(1)  # (B, 1, T_new, L)
        if masks is not None:
            masks[window] = mask
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        kk.transpose(1, 2).to(q.dtype),
        vv.transpose(1, 2).to(q.dtype),
        attn_mask=mask,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)
