"""Pieces every command module shares: option types, examples epilogs, the not-built-yet exit."""

from __future__ import annotations

from nanochat.common.errors import NanochatError


def examples(*lines: str) -> str:
    """An `Examples:` epilog; each line is shown as its own paragraph."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def not_built(command: str, stage: str) -> None:
    """The one-line exit for a command whose stage is not built yet (no fake output)."""
    raise NanochatError(f"`nanochat {command}` is not built yet: the {stage} stage has not landed in this version")


DEVICE_HELP = "auto (cuda > mps > cpu), cuda, mps or cpu."
NPROC_HELP = "Processes to run (one per GPU). Default: every visible GPU via torchrun; 1 runs here."
