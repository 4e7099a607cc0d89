"""`nanochat chat`: talk to the model in the terminal (interactive, one-shot with -p, or piped stdin)."""

from __future__ import annotations

from typing import Optional

import typer

from nanochat.commands import _ranges as ranges
from nanochat.commands._common import DEVICE_HELP
from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY, check_repetition_settings


def chat(
    source: Optional[str] = typer.Option(None, help="sft, rl or base. Default: the newest of sft and rl."),
    model_tag: Optional[str] = typer.Option(None, help="Model tag (e.g. d20). Default: the one written most recently."),
    step: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Checkpoint step. Default: the newest complete one."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="One-shot prompt: print the answer and exit (stdin is appended when piped)."),
    temperature: float = typer.Option(0.6, callback=ranges.number(low=0, high=2), help="Sampling temperature, 0 (greedy) to 2."),
    top_k: int = typer.Option(50, callback=ranges.count(low=0), help="Sample from the k most likely tokens (0: all)."),
    max_tokens: int = typer.Option(1024, callback=ranges.count(), help="Most tokens per answer."),
    seed: Optional[int] = typer.Option(None, callback=ranges.count(low=0), help="Seed for sampling (default: random)."),
    repetition_penalty: float = typer.Option(CHAT_REPETITION_PENALTY, help="Push down tokens the answer already used: 1 is off, up to 10."),
    no_repeat_ngram: int = typer.Option(CHAT_NO_REPEAT_NGRAM, help="Never repeat a run of this many tokens within an answer; 0 is off."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print tokens and tokens/s after each answer."),
    score_prompts: Optional[str] = typer.Option(None, help="Answer a prompt set (demo: the packaged one, or a JSONL file) greedily, score each answer and record it in the report."),
) -> None:
    """Chat with a model in the terminal: streaming, multi-turn, /help for commands."""
    import sys

    from nanochat.common import checks
    from nanochat.common.checkpoint import SOURCES, require_checkpoint
    from nanochat.common.device import check_device_name
    from nanochat.common.errors import NanochatError, UsageError
    from nanochat.engine.loading import load_chat_model, newest_chat_source

    checks.one_of("source", source, SOURCES)
    try:
        check_repetition_settings(repetition_penalty, no_repeat_ngram)
    except ValueError as e:
        raise UsageError(f"{e}: fix --repetition-penalty / --no-repeat-ngram") from None
    check_device_name(device)
    src = source or newest_chat_source()
    require_checkpoint(src, model_tag, step)  # a wrong --model-tag or --step fails here, naming what exists, before any load
    piped = not sys.stdin.isatty()
    text = None
    if score_prompts is not None:
        piped = False  # the prompts come from the set
    elif prompt is not None or piped:
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
    if score_prompts is not None:
        from nanochat.engine.chat_loop import score_prompt_set

        score_prompt_set(Engine(model, tokenizer), label, score_prompts)
        return
    session = ChatSession(Engine(model, tokenizer), temperature=temperature, top_k=top_k or None, max_tokens=max_tokens, seed=seed, verbose=verbose,
                          repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram)
    if text is not None:
        session.answer(text, sys.stdout)
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    session.repl(input, sys.stdout)
