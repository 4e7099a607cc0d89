"""The AdamW update of one tensor (decoupled weight decay, bias-corrected moments).

Same math, in the same order, as torch.optim.AdamW: p *= 1 - lr*wd; m <- lerp(m, g, 1-b1); v <- b2 v + (1-b2) g^2;
p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Hyperparameters are floats (eager) or 0-d CPU tensors
(compiled: one kernel then serves every step and every schedule value without recompiling).
"""

from __future__ import annotations

import torch


def adamw_step(
    p: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    weight_decay: torch.Tensor,
) -> None:
    """Update p (a parameter or a shard of one) in place; `step` counts from 1."""
    g = grad.to(exp_avg.dtype)
    # the operations in torch.optim.AdamW's order, so the two agree to rounding
    p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).add_(g * g * (1 - beta2))
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = exp_avg_sq.sqrt() / bias2**0.5 + eps
    p.sub_((lr / bias1) * (exp_avg / denom))
