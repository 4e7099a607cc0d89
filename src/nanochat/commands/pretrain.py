"""`nanochat pretrain`: train the base model."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, not_built


def pretrain(
    depth: int = typer.Option(20, help="Model depth: the one dial every other size is derived from."),
    data: str = typer.Option("web", help="web, demo, or an imported data set."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
) -> None:
    """Pretrain the base GPT."""
    not_built("pretrain", "pretraining")
