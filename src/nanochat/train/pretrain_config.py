"""`PretrainConfig`: every option of `nanochat pretrain`, declared once (default, help, flag, checks).

Torch-free, so `nanochat pretrain --help` is built from it without loading the trainer; train.pretrain runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from nanochat.common import checkpoint as ck
from nanochat.common import checks
from nanochat.common.device import check_device_name
from nanochat.common.errors import UsageError
from nanochat.common.options import AutoOrCount, option
from nanochat.train.stage_options import EVALUATION, SCHEDULE, compile_option, device_option, keep_last_option, resume_option, wandb_run_option


@dataclass
class PretrainConfig:
    """Options of `nanochat pretrain` (names match the CLI flags; the order is that of --help)."""

    depth: int = option(20, "Model depth: the one dial every other size is derived from.")
    data: str = option("web", "web, demo, or an imported data set.")
    num_iterations: int = option(-1, "Optimizer steps (wins over --target-flops and --target-param-data-ratio); -1 derives them.")
    target_flops: float = option(-1.0, "Train for this many FLOPs (-1: off).")
    target_param_data_ratio: float = option(12.0, "Tokens = ratio × scaling parameters (when no steps or FLOPs are given).")
    # auto (-1, train.pretrain.AUTO_ROWS): the most rows that fit the GPU (train/batch_choice.py)
    device_batch_size: int = option(32, "Rows of --max-seq-len tokens per process per micro-step, or auto: the most that fit the GPU (measured before step 0; the total batch is kept).",
                                    text=AutoOrCount("rows"))  # fmt: skip
    total_batch_size: int = option(-1, "Tokens per optimizer step, or auto (power law in depth on CUDA; one micro-batch per process elsewhere).", text=AutoOrCount("tokens"))
    max_seq_len: int = option(2048, "Context length.")
    aspect_ratio: int = option(64, "Width ≈ depth × aspect ratio (rounded up to the head dim).")
    head_dim: int = option(128, "Attention head dimension.")
    n_kv_head: int | None = option(None, "Key/value heads (GQA); default: as many as query heads.")
    window_pattern: str = option("SSSL", "Sliding-window pattern over layers (S short, L long; the last layer is always L).")
    smear: bool = option(True, "Gate the previous token's embedding into each position.", flags=("--smear/--no-smear",))
    backout: bool = option(False, "Subtract a learned share of the mid-depth residual before the head (off by default: it cost bpb at d12).", flags=("--backout/--no-backout",))
    attn_gate: bool = option(False, "Scale each attention head's output by a learned, input-dependent gate.", flags=("--attn-gate/--no-attn-gate",))
    embedding_lr: float = option(0.3, "AdamW LR of the token embedding (before × √(B/B_ref)).", panel=SCHEDULE)
    unembedding_lr: float = option(0.008, "AdamW LR of the output head (before scaling).", panel=SCHEDULE)
    matrix_lr: float = option(0.02, "Muon LR of the block matrices (before scaling).", panel=SCHEDULE)
    scalar_lr: float = option(0.5, "AdamW LR of the per-layer scalars (before scaling).", panel=SCHEDULE)
    weight_decay: float = option(0.28, "Muon weight decay at depth 12 (rescaled for this run).", panel=SCHEDULE)
    warmup_steps: int = option(40, "Linear LR warmup steps.", panel=SCHEDULE)
    warmdown_ratio: float = option(0.65, "Fraction of the steps in the final linear LR warmdown.", panel=SCHEDULE)
    final_lr_frac: float = option(0.05, "LR multiplier at the last step.", panel=SCHEDULE)
    warmdown_shape: str = option("linear", "LR warmdown: linear, or sqrt (1 - sqrt of its progress).", panel=SCHEDULE)  # optim.schedules.lr_multiplier
    eval_every: int = option(250, "Val bits-per-byte every N steps (and at the end); -1 off.", panel=EVALUATION)
    eval_tokens: int = option(-1, "Tokens per val bpb evaluation; -1: 80×2^19 on CUDA, 20 micro-batches elsewhere.", panel=EVALUATION)
    sample_every: int = option(2000, "Greedy samples of fixed prompts every N steps (and at the end); -1 off.", panel=EVALUATION)
    core_metric_every: int | None = option(None, "CORE eval every N steps (and at the end); default 2000 on CUDA, off elsewhere; -1 off.", panel=EVALUATION)
    core_metric_max_per_task: int = option(500, "Examples per CORE task during training (-1: all).", panel=EVALUATION)
    save_every: int = option(-1, "Checkpoint every N steps; -1: only at the end (and on SIGTERM/SIGINT).", panel=EVALUATION)
    keep_last: int | None = keep_last_option()
    resume: str = resume_option()
    model_tag: str | None = option(None, "Checkpoint folder name; default d<depth>.", panel=EVALUATION)
    run: str = wandb_run_option()
    device: str = device_option()
    seed: int = option(42, "Seed of the initialisation (the data order is fixed by the corpus).", check=partial(checks.count, low=0))
    compile: bool | None = compile_option()
    activation_checkpointing: bool = option(False, "Recompute each block in the backward pass: ~1/3 more compute, activations of about one block (for depths that fit no batch otherwise).",
                                            flags=("--activation-checkpointing/--no-activation-checkpointing",))  # fmt: skip
    max_bad_steps: int = option(5, "Stop after this many non-finite-loss steps in a row (each is skipped).")
    tokenizer_threads: int = option(4, "Threads tokenising training text in the background.")
    fp8: bool = option(False, "FP8 matmuls (tensorwise scaling) in the blocks' attention and MLP projections; needs a Hopper or Ada GPU. The head and gates stay bf16.",
                       flags=("--fp8",))  # fmt: skip
    dry_run: bool = option(False, "Build on the meta device, print the plan (parameters, FLOPs, batch, memory, data) and exit.", flags=("--dry-run",))
    dry_run_world_size: int = field(default=1, repr=False)  # processes a --dry-run plans for
    # for tests: restore the data loader / RNG on resume (a negative control turns them off)
    restore_loader: bool = field(default=True, repr=False)
    restore_rng: bool = field(default=True, repr=False)

    @property
    def tag(self) -> str:
        return self.model_tag or f"d{self.depth}"

    def validate(self) -> None:
        """Refuse option values that make no run (bad usage, exit 2); reads no files, so commands call it first."""
        from nanochat.optim.schedules import WARMDOWN_SHAPES  # here: nanochat.optim loads torch

        checks.count("depth", self.depth)
        if self.max_seq_len < 8:
            raise UsageError(f"--max-seq-len {self.max_seq_len} is too short; use at least 8")
        checks.count("device_batch_size", self.device_batch_size, minus_one="auto")
        checks.count("total_batch_size", self.total_batch_size, minus_one="auto")
        checks.count("num_iterations", self.num_iterations, minus_one="derive them from --target-flops or --target-param-data-ratio")
        checks.number("target_flops", self.target_flops, low=0, low_open=True, minus_one="off")
        checks.number("target_param_data_ratio", self.target_param_data_ratio, low=0, low_open=True, minus_one="off")
        for name in ("aspect_ratio", "head_dim", "n_kv_head", "tokenizer_threads", "max_bad_steps"):
            checks.count(name, getattr(self, name))
        if self.head_dim % 2:
            raise UsageError(f"--head-dim {self.head_dim} is odd; rotary embeddings need an even head dim, e.g. 64 or 128")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise UsageError(f"--window-pattern {self.window_pattern!r} must be letters S (short window) and L (long), e.g. SSSL")
        for name in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay"):
            checks.number(name, getattr(self, name), low=0)
        checks.count("warmup_steps", self.warmup_steps, low=0)
        checks.number("warmdown_ratio", self.warmdown_ratio, low=0, high=1)
        checks.number("final_lr_frac", self.final_lr_frac, low=0, high=1)
        if self.warmdown_shape not in WARMDOWN_SHAPES:
            raise UsageError(f"--warmdown-shape {self.warmdown_shape!r} must be one of {', '.join(WARMDOWN_SHAPES)}")
        for name in ("eval_every", "sample_every", "core_metric_every", "save_every"):
            checks.count(name, getattr(self, name), minus_one="off" if name != "save_every" else "only at the end")
        checks.count("eval_tokens", self.eval_tokens, minus_one="auto")
        checks.count("core_metric_max_per_task", self.core_metric_max_per_task, minus_one="all")
        checks.count("keep_last", self.keep_last)
        checks.resume(self.resume)
        if self.model_tag is not None:
            ck.checkpoint_dir("base", self.model_tag)  # a tag that is not a folder name is refused there
        check_device_name(self.device)


OPTIMIZER_FIELDS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay")


def optimizer_settings(cfg: PretrainConfig | None = None) -> dict[str, float]:
    """The LRs (unscaled) and weight decay as `build_optimizer` takes them: `cfg`'s, else the defaults of
    `nanochat pretrain` (for callers with no run of their own, e.g. timing a step; never a copy of the numbers)."""
    cfg = cfg if cfg is not None else PretrainConfig()
    return {name: getattr(cfg, name) for name in OPTIMIZER_FIELDS}
