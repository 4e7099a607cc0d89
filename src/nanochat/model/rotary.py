"""Rotary position embeddings (RoPE), base 100,000, half-split pairs.

Channel i of the first half is paired with channel i of the second half (not interleaved), and each pair is
rotated by -theta (the reference's convention): y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos. Only relative
positions matter to attention, so either sign works; we keep the reference's.
"""

from __future__ import annotations

import torch

ROPE_BASE = 100_000.0


def rotary_tables(num_positions: int, head_dim: int, device, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (num_positions, head_dim // 2), float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    t = torch.arange(num_positions, dtype=torch.float64, device=device)
    angles = torch.outer(t, inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) with cos/sin broadcastable to (B, T, 1, D/2)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
