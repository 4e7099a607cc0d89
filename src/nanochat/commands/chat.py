"""`nanochat chat`: talk to the model in the terminal (interactive, one-shot with -p, or piped stdin)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands._common import DEVICE_HELP


def chat(
    source: Optional[str] = typer.Option(None, help="sft, rl or base. Default: the newest of sft and rl."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag (e.g. d20). Default: the one written most recently."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step. Default: the newest complete one."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="One-shot prompt: print the answer and exit (stdin is appended when piped)."),
    temperature: float = typer.Option(0.6, help="Sampling temperature, 0 (greedy) to 2."),
    top_k: int = typer.Option(50, help="Sample from the k most likely tokens (0: all)."),
    max_tokens: int = typer.Option(1024, help="Most tokens per answer."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling (default: random)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print tokens and tokens/s after each answer."),
) -> None:
    """Chat with a model in the terminal: streaming, multi-turn, /help for commands."""
    import sys

    from nanochat.common import checks
    from nanochat.common.checkpoint import SOURCES, require_checkpoint
    from nanochat.common.device import check_device_name
    from nanochat.common.errors import NanochatError, UsageError
    from nanochat.engine.loading import load_chat_model, newest_chat_source

    checks.one_of("source", source, SOURCES)
    if not 0.0 <= temperature <= 2.0:
        raise UsageError(f"--temperature {temperature} is out of range; use 0 to 2")
    if top_k < 0:
        raise UsageError(f"--top-k {top_k} is negative; use 0 (all tokens) or more")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens} must be at least 1")
    check_device_name(device)
    src = source or newest_chat_source()
    require_checkpoint(src, model_tag, step)  # a wrong --model-tag or --step fails here, naming what exists, before any load
    piped = not sys.stdin.isatty()
    text = None
    if prompt is not None or piped:
        stdin_text = sys.stdin.read().strip() if piped else ""
        text = "\n\n".join(t for t in ((prompt or "").strip(), stdin_text) if t)
        if not text:
            raise NanochatError("nothing to answer: the prompt is empty; pass -p PROMPT, pipe text in, or run in a terminal to chat")

    from nanochat.common.device import detect_device
    from nanochat.common.logging import console
    from nanochat.engine.chat_loop import ChatSession
    from nanochat.engine.engine import Engine

    dev = detect_device(device)
    model, tokenizer, label = load_chat_model(src, model_tag, step, dev, quiet=True)
    console(stderr=True).print(f"chatting with {label} on {dev}")
    session = ChatSession(Engine(model, tokenizer), temperature=temperature, top_k=top_k or None, max_tokens=max_tokens, seed=seed, verbose=verbose)
    if text is not None:
        session.answer(text, sys.stdout)
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    session.repl(input, sys.stdout)
