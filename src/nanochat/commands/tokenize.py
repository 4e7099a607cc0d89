"""`nanochat tokenize-train` and `nanochat tokenize-eval`: the BPE tokenizer."""

from __future__ import annotations

import typer

from nanochat.commands._common import not_built


def tokenize_train(
    vocab_size: int = typer.Option(32768, help="Vocabulary size, special tokens included."),
    max_chars: float = typer.Option(2e9, help="Characters of training text to read."),
    data: str = typer.Option("web", help="web, demo, or an imported data set."),
) -> None:
    """Train the byte-level BPE tokenizer."""
    not_built("tokenize-train", "tokenizer")


def tokenize_eval() -> None:
    """Compare compression against the GPT-2 and GPT-4 tokenizers."""
    not_built("tokenize-eval", "tokenizer")
