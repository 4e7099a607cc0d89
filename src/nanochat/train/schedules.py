"""Per-step schedules of pretraining: LR multiplier, Muon momentum and Muon weight decay.

All are pure functions of the step `it` (0-based) and the horizon `num_iterations`; the loop runs
steps 0..num_iterations (the last one only evaluates and saves), so `it == num_iterations` is valid.

- LR: linear warmup (it+1)/warmup for it < warmup; 1.0; then, over the last round(warmdown_ratio · n)
  steps, linearly down to `final_lr_frac` at it = n.
- Muon momentum: 0.85 → 0.97 linearly over the first 400 steps, then 0.97; during the LR warmdown it
  falls linearly 0.97 → 0.90.
- Muon weight decay: cosine λ · ½(1 + cos(π · it / n)), reaching 0 at the end.
"""

from __future__ import annotations

import math


def warmdown_start(num_iterations: int, warmdown_ratio: float) -> int:
    """The last step at full LR; the warmdown runs over the steps after it."""
    return num_iterations - round(warmdown_ratio * num_iterations)


def lr_multiplier(it: int, num_iterations: int, warmup_steps: int = 40, warmdown_ratio: float = 0.65, final_lr_frac: float = 0.05) -> float:
    warmdown = round(warmdown_ratio * num_iterations)
    if it < warmup_steps:
        return (it + 1) / warmup_steps
    if it <= num_iterations - warmdown:
        return 1.0
    left = (num_iterations - it) / warmdown  # 1 → 0 across the warmdown
    return left + (1.0 - left) * final_lr_frac


def muon_momentum(
    it: int,
    num_iterations: int,
    warmdown_ratio: float = 0.65,
    start: float = 0.85,
    peak: float = 0.97,
    end: float = 0.90,
    warmup_steps: int = 400,
) -> float:
    frac = min(it / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    momentum = start + (peak - start) * frac
    warmdown = round(warmdown_ratio * num_iterations)
    begin = num_iterations - warmdown
    if warmdown > 0 and it > begin:
        progress = (it - begin) / warmdown  # 0 → 1 across the warmdown
        momentum = momentum + (end - momentum) * progress
    return momentum


def weight_decay(it: int, num_iterations: int, base: float) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * it / max(num_iterations, 1)))
