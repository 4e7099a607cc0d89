"""`nanochat export`: a checkpoint as a folder other tools load (Hugging Face transformers)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges

FORMATS = ("hf",)


def export(
    out: Optional[str] = typer.Option(None, "--out", help="Folder to write (new, empty, or an earlier export, which is replaced)."),
    source: str = typer.Option("sft", help="Which checkpoints: base, sft or rl."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag (default: the newest)."),
    step: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Checkpoint step (default: the newest complete one)."),
    format_: str = typer.Option("hf", "--format", help="hf: a Hugging Face transformers folder (load with trust_remote_code=True)."),
) -> None:
    """Export a checkpoint for use elsewhere: --format hf writes a folder transformers loads without nanochat."""
    from nanochat.common import checks
    from nanochat.common.checkpoint import SOURCES, require_checkpoint
    from nanochat.common.errors import UsageError

    checks.one_of("format", format_, FORMATS)
    if not out:
        raise UsageError("--out DIR is required: the folder to write the export to")
    checks.one_of("source", source, SOURCES)
    require_checkpoint(source, model_tag, step)  # a typo fails before anything loads

    from nanochat.common.logging import print0
    from nanochat.export.hf import export_hf

    path = export_hf(source, model_tag, step, out)
    print0(f"exported to {path}: load it with AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)")
