"""`nanochat speedrun`: every stage in order, resumable, ending in a report card."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import not_built


def speedrun(
    depth: int = typer.Option(26, help="Model depth."),
    demo: bool = typer.Option(False, "--demo", help="A tiny run on the packaged data (CPU, minutes)."),
    from_stage: Optional[str] = typer.Option(None, help="Start at this stage."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
) -> None:
    """Run every stage in order, from tokenizer to report card."""
    not_built("speedrun", "speedrun")
