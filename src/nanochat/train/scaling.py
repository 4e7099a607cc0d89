"""Depth → batch size, learning rates, weight decay, training horizon and gradient accumulation.

Everything a pretraining run derives from `--depth` is computed here, in one place, from a few facts
about the model (its scaling parameter count and FLOPs per token, and those of the depth-12 reference
model with the same vocabulary and context). The formulas are calibrated at depth 12:

- total batch  B = 2^round(log2(B_ref · (N/N_ref)^0.383)), B_ref = 2^19 tokens (Power Lines: B_opt ∝ D^0.383,
  and D/D_ref = N/N_ref because both runs use the same tokens:params ratio);
- learning rates: every base LR × √(B/B_ref);
- weight decay: λ_ref · √(B/B_ref) · (D_ref/D), λ_ref = `--weight-decay` (the depth-12 value);
- horizon: `num_iterations` if given, else target FLOPs / (FLOPs per token · B), else ratio · N / B;
- gradient accumulation: B / (device batch · sequence length · world size), which must divide exactly.

`plan_training` returns a `TrainPlan`; `TrainPlan.rows()` is the table printed before step 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nanochat.common.errors import NanochatError, UsageError
from nanochat.train.pretrain_config import PretrainConfig

B_REF = 2**19  # tokens per optimizer step of the depth-12 reference run
REF_DEPTH = 12
BATCH_EXPONENT = 0.383  # B_opt ∝ D^0.383 (Power Lines)


@dataclass(frozen=True)
class ModelFacts:
    """What the scaling laws need to know about the model being trained and the depth-12 reference."""

    depth: int
    model_dim: int
    n_head: int
    total_params: int
    scaling_params: int  # transformer matrices + lm_head (Kaplan-style; no embeddings, no scalars)
    ref_scaling_params: int  # the same count for the depth-12 model with this vocabulary
    flops_per_token: float  # forward + backward


@dataclass(frozen=True)
class ScalingOptions:
    """The run's requests; -1 (or None) means "derive it". The defaults are `nanochat pretrain`'s (PretrainConfig)."""

    device_batch_size: int = PretrainConfig.device_batch_size
    max_seq_len: int = PretrainConfig.max_seq_len
    world_size: int = 1
    total_batch_size: int = PretrainConfig.total_batch_size  # tokens per optimizer step; -1 = auto
    num_iterations: int = PretrainConfig.num_iterations  # 1st precedence
    target_flops: float = PretrainConfig.target_flops  # 2nd precedence
    target_param_data_ratio: float = PretrainConfig.target_param_data_ratio  # 3rd precedence
    embedding_lr: float = PretrainConfig.embedding_lr
    unembedding_lr: float = PretrainConfig.unembedding_lr
    matrix_lr: float = PretrainConfig.matrix_lr
    scalar_lr: float = PretrainConfig.scalar_lr
    weight_decay: float = PretrainConfig.weight_decay  # at depth 12; rescaled for this run
    lr_scaling: bool = True  # False: use the LRs and weight decay as given


@dataclass(frozen=True)
class TrainPlan:
    """Every derived number of a pretraining run."""

    total_batch_size: int
    batch_source: str
    grad_accum_steps: int
    num_iterations: int
    horizon_source: str
    total_tokens: int
    total_flops: float
    tokens_per_param: float
    lr_scale: float
    embedding_lr: float
    unembedding_lr: float
    matrix_lr: float
    scalar_lr: float
    weight_decay: float

    def to_dict(self) -> dict:
        return asdict(self)


def auto_total_batch_size(scaling_params: int, ref_scaling_params: int, b_ref: int = B_REF) -> int:
    """The power-law batch in tokens, rounded to a power of two."""
    if scaling_params <= 0 or ref_scaling_params <= 0:
        raise NanochatError("scaling parameter counts must be positive; the model reported none")
    return 2 ** round(math.log2(b_ref * (scaling_params / ref_scaling_params) ** BATCH_EXPONENT))


def lr_scale(total_batch_size: int, b_ref: int = B_REF) -> float:
    """√(B/B_ref): the factor every learning rate is multiplied by."""
    return math.sqrt(total_batch_size / b_ref)


def scaled_weight_decay(base: float, total_batch_size: int, scaling_params: int, ref_scaling_params: int, b_ref: int = B_REF) -> float:
    """λ = λ_ref · √(B/B_ref) · (D_ref/D), with D/D_ref = N/N_ref at a common tokens:params ratio."""
    return base * math.sqrt(total_batch_size / b_ref) * (ref_scaling_params / scaling_params)


def grad_accum_steps(total_batch_size: int, device_batch_size: int, max_seq_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step; the total batch must be a whole number of micro-batches."""
    per_step = device_batch_size * max_seq_len * world_size
    if total_batch_size % per_step != 0:
        raise UsageError(
            f"--total-batch-size {total_batch_size} is not a multiple of device batch × sequence × processes "
            f"= {device_batch_size} × {max_seq_len} × {world_size} = {per_step}; change --device-batch-size or --total-batch-size"
        )
    return total_batch_size // per_step


def horizon(opts: ScalingOptions, facts: ModelFacts, total_batch_size: int) -> tuple[int, str]:
    """(num_iterations, how it was chosen): explicit steps > target FLOPs > tokens:params ratio."""
    if opts.num_iterations > 0:
        return opts.num_iterations, "--num-iterations"
    if opts.target_flops > 0:
        n = round(opts.target_flops / (facts.flops_per_token * total_batch_size))
        if n < 1:
            raise UsageError(f"--target-flops {opts.target_flops:.3g} buys less than one step of {total_batch_size} tokens; raise it")
        return n, f"--target-flops {opts.target_flops:.3g}"
    if opts.target_param_data_ratio > 0:
        n = int(opts.target_param_data_ratio * facts.scaling_params) // total_batch_size
        if n < 1:
            raise UsageError(f"--target-param-data-ratio {opts.target_param_data_ratio:g} gives less than one step of {total_batch_size} tokens; raise it")
        return n, f"tokens = {opts.target_param_data_ratio:g} × scaling params"
    raise UsageError("no training horizon: give --num-iterations, --target-flops or --target-param-data-ratio (> 0)")


def plan_training(opts: ScalingOptions, facts: ModelFacts, power_law_batch: bool = True) -> TrainPlan:
    """Derive every number of the run from the model facts and the options.

    `power_law_batch=False` (CPU and MPS runs) makes the automatic batch one micro-batch per process:
    the power law is calibrated for GPU runs of hundreds of millions of tokens, and a CPU demo run
    would spend minutes on each accumulated step.
    """
    for name in ("device_batch_size", "max_seq_len", "world_size"):
        if getattr(opts, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(opts, name)})")
    micro = opts.device_batch_size * opts.max_seq_len * opts.world_size
    if opts.total_batch_size > 0:
        total_batch, source = opts.total_batch_size, "--total-batch-size"
    elif not power_law_batch:
        total_batch, source = micro, "auto off the GPU: one micro-batch per process"
    else:
        total_batch, source = auto_total_batch_size(facts.scaling_params, facts.ref_scaling_params), "auto (power law)"
        if total_batch < micro:
            total_batch, source = micro, "auto, raised to one micro-batch per process"
    accum = grad_accum_steps(total_batch, opts.device_batch_size, opts.max_seq_len, opts.world_size)
    iters, horizon_source = horizon(opts, facts, total_batch)
    scale = lr_scale(total_batch) if opts.lr_scaling else 1.0
    wd = scaled_weight_decay(opts.weight_decay, total_batch, facts.scaling_params, facts.ref_scaling_params) if opts.lr_scaling else opts.weight_decay
    tokens = iters * total_batch
    return TrainPlan(
        total_batch_size=total_batch,
        batch_source=source,
        grad_accum_steps=accum,
        num_iterations=iters,
        horizon_source=horizon_source,
        total_tokens=tokens,
        total_flops=facts.flops_per_token * tokens,
        tokens_per_param=tokens / facts.scaling_params,
        lr_scale=scale,
        embedding_lr=opts.embedding_lr * scale,
        unembedding_lr=opts.unembedding_lr * scale,
        matrix_lr=opts.matrix_lr * scale,
        scalar_lr=opts.scalar_lr * scale,
        weight_decay=wd,
    )


def plan_rows(facts: ModelFacts, opts: ScalingOptions, plan: TrainPlan) -> list[tuple[str, str]]:
    """The derived-values table printed before step 0."""
    head_dim = facts.model_dim // facts.n_head
    return [
        ("depth / width / heads", f"{facts.depth} / {facts.model_dim} / {facts.n_head} (head dim {head_dim})"),
        ("parameters", f"{facts.total_params:,} total, {facts.scaling_params:,} scaling (d12 ref {facts.ref_scaling_params:,})"),
        ("FLOPs per token", f"{facts.flops_per_token:.3e}"),
        ("sequence length", str(opts.max_seq_len)),
        ("device batch × processes", f"{opts.device_batch_size} × {opts.world_size}"),
        ("total batch (tokens)", f"{plan.total_batch_size:,} [{plan.batch_source}]"),
        ("gradient accumulation", str(plan.grad_accum_steps)),
        ("iterations", f"{plan.num_iterations:,} [{plan.horizon_source}]"),
        ("tokens", f"{plan.total_tokens:,} ({plan.tokens_per_param:.2f} per scaling param)"),
        ("total FLOPs", f"{plan.total_flops:.3e}"),
        ("LR scale √(B/B_ref)", f"{plan.lr_scale:.4f}"),
        ("base LRs (× LR scale)", f"matrix {plan.matrix_lr:.6g}, embedding {plan.embedding_lr:.6g}, "
                                  f"unembedding {plan.unembedding_lr:.6g}, scalar {plan.scalar_lr:.6g}"),
        *effective_lr_rows(facts.model_dim, plan),
        ("weight decay (Muon)", f"{plan.weight_decay:.6g}"),
    ]  # fmt: skip


def effective_lr_rows(model_dim: int, plan: TrainPlan) -> list[tuple[str, str]]:
    """The learning rate each optimizer group really steps with (width factor and group multipliers applied)."""
    from nanochat.optim.combined import adamw_groups, muon_lr

    groups = adamw_groups(model_dim, embedding_lr=plan.embedding_lr, unembedding_lr=plan.unembedding_lr, scalar_lr=plan.scalar_lr)
    d = model_dim
    rows = [("effective LR Muon", f"{plan.matrix_lr:.6g}"), (f"effective LR Muon c_fc ({4 * d}×{d})", f"{muon_lr(plan.matrix_lr, 4 * d, d):.6g} (tall: ×√4)")]
    return rows + [(f"effective LR {name} (AdamW)", f"{lr:.6g}") for name, lr, _, _ in groups]
