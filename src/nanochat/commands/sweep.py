"""`nanochat sweep`: scaling studies."""

from __future__ import annotations

import typer

from nanochat.commands._common import not_built


def sweep(kind: str = typer.Argument(..., help="miniseries or isoflop.")) -> None:
    """Scaling studies: many pretraining runs, a CSV, fitted laws and plots."""
    not_built("sweep", "sweep")
