"""Every training schedule (docs/reference.md, "The depth dial and schedules"): LR multiplier, Muon momentum and
weight decay of pretraining; the progress-based LR and the momentum warmup of SFT; RL's linear decay.

All are pure functions; the trainers feed them to `MuonAdamW.set_schedule(lr, momentum, weight_decay)` every step.
Pretraining's are functions of the step `it` (0-based) and the run length `num_iterations`; SFT's LR of the
progress p in [0, 1] (step / N, or the share of the epoch consumed), so a one-epoch run of unknown length works.
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


MUON_MOMENTUM = (0.85, 0.97, 0.90)  # pretraining's Muon momentum: start, peak (after the warmup), end (of the warmdown)
MUON_MOMENTUM_WARMUP_STEPS = 400


def muon_momentum(
    it: int,
    num_iterations: int,
    warmup_steps: int = MUON_MOMENTUM_WARMUP_STEPS,
    start: float = MUON_MOMENTUM[0],
    peak: float = MUON_MOMENTUM[1],
    end: float = MUON_MOMENTUM[2],
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


SFT_MOMENTUM_WARMUP_STEPS = 300
SFT_MOMENTUM_START, SFT_MOMENTUM_RISE = 0.85, 0.10  # SFT's Muon momentum rises from 0.85 by 0.10, to 0.95


def sft_lr_multiplier(progress: float, init_lr_frac: float, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float) -> float:
    """init_lr_frac x (a warmup ramp over warmup_ratio, 1, then a linear warmdown over the last warmdown_ratio to
    final_lr_frac) at progress p in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if warmup_ratio > 0 and p < warmup_ratio:
        m = (p + 1e-8) / warmup_ratio
    elif p <= 1.0 - warmdown_ratio:
        m = 1.0
    else:
        m = 1.0 + (final_lr_frac - 1.0) * (p - (1.0 - warmdown_ratio)) / max(warmdown_ratio, 1e-12)
    return init_lr_frac * m


def sft_muon_momentum(step: int) -> float:
    """0.85 -> 0.95 linearly over the first SFT_MOMENTUM_WARMUP_STEPS steps, then 0.95."""
    return SFT_MOMENTUM_START + SFT_MOMENTUM_RISE * min(step / SFT_MOMENTUM_WARMUP_STEPS, 1.0)


def rl_lr_multiplier(step: int, num_steps: int) -> float:
    """RL's LR: from 1 at step 0 down linearly, 1 - step / num_steps."""
    return 1.0 - step / num_steps


def describe_pretrain_momentum() -> str:
    """The pretraining plan's momentum phrase, from the constants the schedule uses."""
    a, b, c = MUON_MOMENTUM
    return f"Muon momentum {a:g}→{b:g} over {MUON_MOMENTUM_WARMUP_STEPS} steps, →{c:g} over the warmdown"


def describe_sft_momentum() -> str:
    """The SFT plan's momentum phrase, from the constants the schedule uses."""
    return f"Muon momentum {SFT_MOMENTUM_START:g}→{SFT_MOMENTUM_START + SFT_MOMENTUM_RISE:g} over {SFT_MOMENTUM_WARMUP_STEPS} steps"
