"""`nanochat serve`: the web page and the OpenAI-compatible API."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import not_built


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    source: str = typer.Option("sft", help="sft or rl."),
    api_key: Optional[str] = typer.Option(None, help="Require this Bearer key on every route but /health."),
    workers: Optional[int] = typer.Option(None, help="Engine workers (default: one per GPU, one on CPU)."),
) -> None:
    """Serve the chat page and an OpenAI-compatible API."""
    not_built("serve", "inference")
