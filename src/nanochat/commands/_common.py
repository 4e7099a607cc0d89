"""Pieces every command module shares: the command classes, examples epilogs, help texts, the not-built-yet exit."""

from __future__ import annotations

from typer.core import TyperCommand, TyperGroup

from nanochat.common.errors import NanochatError


def _hide_flag_types(command, ctx) -> None:
    # typer shows every option's type, `<bool>` for flags too; a flag takes no value, so it shows none
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class NanochatCommand(TyperCommand):
    """A subcommand whose help shows no value type for flags (`--dry-run`, not `--dry-run <bool>`)."""

    def format_help(self, ctx, formatter) -> None:
        _hide_flag_types(self, ctx)
        return super().format_help(ctx, formatter)


class NanochatGroup(TyperGroup):
    """A command group (`nanochat`, `nanochat data`) whose help shows no value type for flags."""

    def format_help(self, ctx, formatter) -> None:
        _hide_flag_types(self, ctx)
        return super().format_help(ctx, formatter)


def examples(*lines: str) -> str:
    """An `Examples:` epilog; each line is shown as its own paragraph."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def not_built(command: str, stage: str) -> None:
    """The one-line exit for a command whose stage is not built yet (no fake output)."""
    raise NanochatError(f"`nanochat {command}` is not built yet: the {stage} stage has not landed in this version")


DEVICE_HELP = "auto (cuda > mps > cpu), cuda, mps or cpu."
NPROC_HELP = "Processes to run (one per GPU). Default: every visible GPU via torchrun; 1 runs here."
