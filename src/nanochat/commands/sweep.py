"""`nanochat sweep`: scaling studies."""

from __future__ import annotations

import typer

from nanochat.commands._common import not_built


def sweep(kind: str = typer.Argument(..., help="miniseries or isoflop.")) -> None:
    """Scaling studies: many pretraining runs, a CSV, fitted laws and plots."""
    from nanochat.common.errors import UsageError

    if kind not in ("miniseries", "isoflop"):
        raise UsageError(f"unknown sweep {kind!r}; use `nanochat sweep miniseries` or `nanochat sweep isoflop`")
    not_built("sweep", "sweep")
