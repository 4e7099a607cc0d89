"""`nanochat report`: the report card."""

from __future__ import annotations


def report() -> None:
    """Write report.md (and plots) from what the stages recorded."""
    from nanochat.common.logging import print0, warn0
    from nanochat.eval.report import generate_report, sections_dir

    path, images, plotted = generate_report()
    if not plotted:
        warn0("matplotlib is not installed: plots skipped (pip install 'nanochat[plots]')")
    print0(f"report written to {path} ({len(images)} plots) from the sections in {sections_dir()}")
