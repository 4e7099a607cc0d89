"""`nanochat rl`: policy-gradient training on GSM8K."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, not_built


def rl(
    source: str = typer.Option("sft", help="Checkpoint family to start from."),
    num_samples: int = typer.Option(16, help="Rollouts per question."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
) -> None:
    """Reinforcement learning on GSM8K with the calculator tool."""
    not_built("rl", "RL")
