"""`RLConfig`: every option of `nanochat rl`, declared once (default, help, flag, checks).

Torch-free, so `nanochat rl --help` is built from it without loading the trainer; train.rl runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from nanochat.common import checkpoint as ck
from nanochat.common import checks
from nanochat.common.device import check_device_name
from nanochat.common.errors import UsageError
from nanochat.common.options import option
from nanochat.train.stage_options import EVALUATION, SCHEDULE, device_option, keep_last_option, resume_option, wandb_run_option

RL_TASKS = ("gsm8k", "demo-arith")


@dataclass
class RLConfig:
    """Options of `nanochat rl` (names match the CLI flags; the order is that of --help)."""

    source: str = option("sft", "Checkpoint family to start from: sft (or rl to continue an RL model).")
    task: str = option("gsm8k", "RL task: gsm8k, or demo-arith (small-number word problems with the calculator; learnable by a CPU-sized model).")
    model_tag: str | None = option(None, "Model tag to start from (default: the newest); RL checkpoints go to checkpoints/rl/<tag>/.")
    step: int | None = option(None, "Checkpoint step to start from (default: the newest complete one).")
    train_split: str = option("auto", "auto (GSM8K train from the Hub; offline: a partition carved from the test split), train, or train-from-test.")
    num_epochs: int = option(1, "Epochs over the training problems.")
    num_iterations: int = option(-1, "Optimizer steps (-1: epochs × problems // examples-per-step).")
    device_batch_size: int = option(8, "Rollouts per sampling batch and rows per forward/backward.")
    examples_per_step: int = option(16, "Problems per optimizer step, across all processes (a multiple of their number).")
    num_samples: int = option(16, "Rollouts per problem (a multiple of --device-batch-size).")
    max_new_tokens: int = option(256, "Longest rollout.")
    temperature: float = option(1.0, "Sampling temperature of rollouts and of the pass@k eval.", check=partial(checks.number, low=0))
    top_k: int = option(50, "Top-k sampling (0: off).")
    embedding_lr: float = option(0.2, "AdamW LR of the embeddings (× init-lr-frac).", panel=SCHEDULE)
    unembedding_lr: float = option(0.004, "AdamW LR of the output head (× init-lr-frac).", panel=SCHEDULE)
    matrix_lr: float = option(0.02, "Muon LR of the block matrices (× init-lr-frac).", panel=SCHEDULE)
    scalar_lr: float = option(0.5, "AdamW LR of the per-layer scalars (× init-lr-frac).", panel=SCHEDULE)
    init_lr_frac: float = option(0.05, "The LRs above are multiplied by this, then decay linearly to 0.", panel=SCHEDULE)
    eval_every: int = option(60, "pass@k on held-out GSM8K every N steps (and at the end); -1 off.", panel=EVALUATION)
    eval_examples: int = option(400, "Held-out problems per evaluation.", panel=EVALUATION)
    save_every: int = option(60, "Checkpoint every N steps (and at the end, and on SIGTERM/SIGINT); -1: only then.", panel=EVALUATION)
    keep_last: int | None = keep_last_option("RL ")
    resume: str = resume_option("RL ")
    run: str = wandb_run_option()
    device: str = device_option()

    def validate(self) -> None:
        """Refuse option values that make no run (bad usage, exit 2); reads no files, so commands call it first."""
        checks.one_of("source", self.source, ck.SOURCES)
        if self.task not in RL_TASKS:
            raise UsageError(f"--task {self.task!r} is not an RL task; use one of {', '.join(RL_TASKS)}")
        if self.train_split not in ("auto", "train", "train-from-test"):
            raise UsageError(f"--train-split {self.train_split!r} must be auto, train or train-from-test")
        for name in ("device_batch_size", "examples_per_step", "num_samples", "max_new_tokens", "num_epochs", "eval_examples"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if self.num_samples % self.sampling_batch:
            raise UsageError(f"--num-samples {self.num_samples} must be a multiple of --device-batch-size {self.device_batch_size}")
        checks.count("num_iterations", self.num_iterations, minus_one="epochs × problems // examples per step")
        checks.count("step", self.step, low=0)
        if self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature} must be 0 or more")
        checks.count("top_k", self.top_k, low=0)
        for name in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr"):
            checks.number(name, getattr(self, name), low=0)
        if not (0.0 < self.init_lr_frac <= 1.0):
            raise UsageError(f"--init-lr-frac {self.init_lr_frac} must be in (0, 1]")
        checks.count("eval_every", self.eval_every, minus_one="off")
        checks.count("save_every", self.save_every, minus_one="only at the end")
        if self.keep_last is not None and self.keep_last < 1:
            raise UsageError(f"--keep-last {self.keep_last} must be at least 1")
        checks.resume(self.resume)
        if self.model_tag is not None:
            ck.checkpoint_dir("rl", self.model_tag)  # a tag that is not a folder name is refused there
        check_device_name(self.device)

    @property
    def sampling_batch(self) -> int:
        """Rollouts per Engine call and per forward/backward micro-batch."""
        return min(self.device_batch_size, self.num_samples)
