"""`nanochat data prepare-evals`: the CORE eval bundle and the chat eval sets."""

from __future__ import annotations

import typer

from nanochat.commands._common import not_built


def prepare_evals(
    offline: bool = typer.Option(False, "--offline", help="Build the sets from the data packaged with nanochat (CORE-offline)."),
) -> None:
    """Download the CORE eval bundle and chat eval sets (or build them offline)."""
    not_built("data prepare-evals", "evaluation")
