"""`nanochat eval`: benchmarks of a checkpoint."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, not_built


def eval_(
    source: str = typer.Option("base", help="base, sft or rl."),
    tasks: str = typer.Option("core,bpb", help="Comma-separated tasks."),
    max_per_task: int = typer.Option(-1, help="Examples per task (-1: all)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
) -> None:
    """Evaluate a checkpoint."""
    not_built("eval", "evaluation")
