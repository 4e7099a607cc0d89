"""`nanochat report`: the report card."""

from __future__ import annotations

from nanochat.commands._common import not_built


def report() -> None:
    """Write report.md (and plots) from what the stages recorded."""
    not_built("report", "report")
