"""`SFTConfig`: every option of `nanochat sft`, declared once (default, help, flag, checks).

Torch-free, so `nanochat sft --help` is built from it without loading the trainer; train.sft runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from nanochat.common import checkpoint as ck
from nanochat.common import checks
from nanochat.common.device import check_device_name
from nanochat.common.errors import UsageError
from nanochat.common.options import option
from nanochat.train.stage_options import EVALUATION, compile_option, device_option, keep_last_option, resume_option, wandb_run_option

SCHEDULE = "Schedule and optimizer (None: inherit from the base checkpoint)"


@dataclass
class SFTConfig:
    """Options of `nanochat sft` (names match the CLI flags; None = inherit from the base checkpoint; the order is that of --help)."""

    source: str = option("base", "Checkpoint family to start from: base (or sft, to continue fine-tuning).")
    model_tag: str | None = option(None, "Model tag to start from (default: the newest).")
    step: int | None = option(None, "Checkpoint step to start from (default: the newest complete one).")
    data: str = option("web", "web (SmolTalk + MMLU + GSM8K, online), demo (packaged conversations, offline), or your own: FILE.jsonl or an imported chat set alone.")
    # more conversation sets, FILE[:EPOCHS] or NAME[:EPOCHS]
    add: tuple[str, ...] = option((), "Mix in your conversations: FILE.jsonl (or .parquet, or an imported chat set), FILE.jsonl:3 for three epochs; repeatable.", flags=("--add",))
    skip_bad: bool = option(False, "Leave out bad lines of your conversation files (counted) instead of stopping at the first.", flags=("--skip-bad",))
    num_iterations: int = option(-1, "Optimizer steps; -1: one epoch of the mixture.")
    max_seq_len: int | None = option(None, "Row length (default: the base run's).")
    device_batch_size: int | None = option(None, "Rows per process per micro-step (default: the base run's).")
    total_batch_size: int | None = option(None, "Tokens per optimizer step (default: the base run's).")
    embedding_lr: float | None = option(None, "AdamW LR of the embedding, before batch scaling.", panel=SCHEDULE)
    unembedding_lr: float | None = option(None, "AdamW LR of the output head, before batch scaling.", panel=SCHEDULE)
    matrix_lr: float | None = option(None, "Muon LR of the block matrices, before batch scaling.", panel=SCHEDULE)
    scalar_lr: float = option(0.5, "AdamW LR of the per-layer scalars (not inherited).", panel=SCHEDULE)
    init_lr_frac: float = option(0.8, "Every LR × this fraction.", panel=SCHEDULE)
    warmup_ratio: float = option(0.0, "Fraction of the run in linear LR warmup.", panel=SCHEDULE)
    warmdown_ratio: float = option(0.5, "Fraction of the run in the final linear warmdown.", panel=SCHEDULE)
    final_lr_frac: float = option(0.0, "LR multiplier at the end.", panel=SCHEDULE)
    load_optimizer: bool = option(True, "Warm-start the optimizer moments from the base run (re-sharded if it had another process count).", panel=SCHEDULE,
                                  flags=("--load-optimizer/--no-load-optimizer",))  # fmt: skip
    mmlu_epochs: int = option(3, "Copies of MMLU auxiliary_train in the web mixture.", panel=SCHEDULE)
    gsm8k_epochs: int = option(4, "Copies of GSM8K train in the web mixture.", panel=SCHEDULE)
    eval_every: int = option(200, "Val bpb on held-out conversations every N steps (and at the end); -1 off.", panel=EVALUATION)
    eval_tokens: int = option(-1, "Tokens per val evaluation; -1: 40×2^19 on CUDA, 20 micro-batches elsewhere.", panel=EVALUATION)
    chatcore_every: int = option(-1, "ChatCORE on a sample of the chat evals every N steps (and at the end), as the reference does; -1 off.", panel=EVALUATION)
    chatcore_max_cat: int = option(-1, "With --chatcore-every: problems per categorical task (-1: all).", panel=EVALUATION)  # all, as the reference
    chatcore_max_sample: int = option(24, "With --chatcore-every: problems per generative task (-1: all).", panel=EVALUATION)
    save_every: int = option(-1, "Checkpoint every N steps; -1: at the end (and on SIGTERM/SIGINT).", panel=EVALUATION)
    keep_last: int | None = keep_last_option("sft ")
    resume: str = resume_option("sft ")
    out_tag: str | None = option(None, "Tag of the sft checkpoints (default: the base model's tag).", panel=EVALUATION)
    run: str = wandb_run_option()
    device: str = device_option()
    seed: int = option(42, "Seed of the mixture order.", check=partial(checks.count, low=0))
    compile: bool | None = compile_option()
    max_bad_steps: int = option(5, "Stop after this many non-finite-loss steps in a row.")
    dry_run: bool = option(False, "Load the checkpoint and mixture, print the plan and exit.", flags=("--dry-run",))

    def validate(self) -> None:
        """Refuse option values that make no run (bad usage, exit 2); reads no files, so commands call it first."""
        if self.source not in ("base", "sft"):
            raise UsageError(f"--source {self.source!r}: SFT starts from base (or an earlier sft) checkpoint")
        for name in ("init_lr_frac", "warmup_ratio", "warmdown_ratio", "final_lr_frac"):
            checks.number(name, getattr(self, name), low=0, high=10.0 if name == "init_lr_frac" else 1.0)
        if self.warmup_ratio + self.warmdown_ratio > 1.0:
            raise UsageError("--warmup-ratio + --warmdown-ratio must be at most 1")
        checks.resume(self.resume)
        checks.count("num_iterations", self.num_iterations, minus_one="one epoch")
        checks.count("step", self.step, low=0)
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise UsageError(f"--max-seq-len {self.max_seq_len} is too short; use at least 8 (or omit it for the base run's)")
        for name in ("device_batch_size", "total_batch_size", "keep_last", "max_bad_steps"):
            checks.count(name, getattr(self, name))
        for name in ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr"):
            checks.number(name, getattr(self, name), low=0)
        for name in ("mmlu_epochs", "gsm8k_epochs"):
            checks.count(name, getattr(self, name), low=0)
        checks.count("eval_every", self.eval_every, minus_one="off")
        checks.count("eval_tokens", self.eval_tokens, minus_one="auto")
        checks.count("chatcore_every", self.chatcore_every, minus_one="off")
        checks.count("chatcore_max_cat", self.chatcore_max_cat, minus_one="all")
        checks.count("chatcore_max_sample", self.chatcore_max_sample, minus_one="all")
        checks.count("save_every", self.save_every, minus_one="only at the end")
        for tag in (self.model_tag, self.out_tag):
            if tag is not None:
                ck.checkpoint_dir("sft", tag)  # a tag that is not a folder name is refused there
        check_device_name(self.device)

    def check_data(self) -> list:
        """Read and check every conversation file named in --data/--add (before any model loads): the
        first bad line stops with `FILE:LINE: reason`, unless --skip-bad. Returns the files' ChatFiles."""
        from nanochat.data.chat_jsonl import read_chat_file, resolve_chat_source

        specs = ([] if self.data in ("web", "demo") else [("--data", self.data)]) + [("--add", a) for a in self.add]
        return [read_chat_file(resolve_chat_source(spec, flag).path, self.skip_bad) for flag, spec in specs]
