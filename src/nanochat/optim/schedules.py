"""Training schedules of the reference (docs/reference.md, "The depth dial and schedules"): LR multiplier, Muon momentum, weight decay.

All are pure functions of the step `it` (0-based) and the run length `num_iterations`; the trainer feeds them to
`MuonAdamW.set_schedule(lr_multiplier(...), muon_momentum(...), weight_decay(...))` every step.
"""

from __future__ import annotations

import math


def _warmdown_start(num_iterations: int, warmdown_ratio: float) -> int:
    return num_iterations - round(warmdown_ratio * num_iterations)


WARMDOWN_SHAPES = ("linear", "sqrt")


def lr_multiplier(
    it: int, num_iterations: int, warmup_steps: int = 40, warmdown_ratio: float = 0.65, final_lr_frac: float = 0.05, shape: str = "linear"
) -> float:
    """Linear warmup (it+1)/warmup_steps, then 1.0, then a warmdown that reaches final_lr_frac at the last step.

    The warmdown falls linearly in its progress p (the reference's), or as 1 - sqrt(p) with shape="sqrt" (the
    "1-sqrt" cooldown of Hägele et al. 2024, arXiv 2405.18392, which they found better than linear): it drops
    faster at first and flattens towards the end."""
    if it < warmup_steps:
        return (it + 1) / warmup_steps
    start = _warmdown_start(num_iterations, warmdown_ratio)
    if it < start:
        return 1.0
    progress = min((it - start) / max(num_iterations - start, 1), 1.0)
    if shape == "sqrt":
        progress = math.sqrt(progress)
    elif shape != "linear":
        raise ValueError(f"warmdown shape {shape!r} is not one of {WARMDOWN_SHAPES}")
    return 1.0 + (final_lr_frac - 1.0) * progress


def muon_momentum(
    it: int,
    num_iterations: int,
    warmup_steps: int = 400,
    start: float = 0.85,
    peak: float = 0.97,
    end: float = 0.90,
    warmdown_ratio: float = 0.65,
) -> float:
    """start -> peak linearly over warmup_steps; peak; then peak -> end linearly over the warmdown."""
    if it < warmup_steps:
        return start + (peak - start) * it / warmup_steps
    wd_start = _warmdown_start(num_iterations, warmdown_ratio)
    if it < wd_start:
        return peak
    progress = (it - wd_start) / max(num_iterations - wd_start, 1)
    return peak + (end - peak) * min(progress, 1.0)


def weight_decay(it: int, num_iterations: int, base: float) -> float:
    """Cosine decay of the Muon weight decay: base * 0.5 * (1 + cos(pi * it / num_iterations)), 0 at the end."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(it, num_iterations) / max(num_iterations, 1)))
