"""The options several training stages share, declared once: their --help panels, --device, --run, --compile, --keep-last, --resume.

Each function returns a fresh dataclass field (a field belongs to one class) for a stage's config
(train/pretrain_config.py, sft_config.py, rl_config.py). Torch-free: the CLI builds --help from these.
"""

from __future__ import annotations

from typing import Any

from nanochat.common.device import DEVICE_HELP
from nanochat.common.options import option

SCHEDULE = "Schedule and optimizer"
EVALUATION = "Evaluation and checkpoints"


def device_option() -> Any:
    return option("auto", DEVICE_HELP)


def wandb_run_option() -> Any:
    return option("dummy", "wandb run name (needs wandb installed); dummy = no wandb.", panel=EVALUATION)


def compile_option() -> Any:
    return option(None, "torch.compile the model; default: on CUDA only.", flags=("--compile/--no-compile",))  # None: on CUDA only


def keep_last_option(kind: str = "") -> Any:
    """--keep-last of a stage whose checkpoints are `kind` ones ("sft ", "RL ", or "" for base checkpoints)."""
    return option(None, f"Keep only the newest K {kind}checkpoints of the tag.", panel=EVALUATION)


def resume_option(kind: str = "") -> Any:
    """--resume of a stage whose checkpoints are `kind` ones."""
    return option("auto", f"auto (newest valid {kind}checkpoint of the tag, if any), never, or a step number.", panel=EVALUATION)
