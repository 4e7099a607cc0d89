"""`nanochat chat`: talk to the model in the terminal."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import not_built


def chat(
    source: str = typer.Option("sft", help="sft or rl."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="One-shot prompt (stdin is read when piped)."),
    temperature: float = typer.Option(0.6, help="Sampling temperature (0: greedy)."),
    top_k: int = typer.Option(50, help="Sample from the k most likely tokens (0: all)."),
) -> None:
    """Chat with a model in the terminal."""
    not_built("chat", "inference")
