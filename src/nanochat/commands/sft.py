"""`nanochat sft`: chat fine-tuning."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP, NPROC_HELP, not_built


def sft(
    source: str = typer.Option("base", help="Checkpoint family to start from."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: Optional[int] = typer.Option(None, help=NPROC_HELP),
) -> None:
    """Fine-tune the base model into a chat model."""
    not_built("sft", "SFT")
