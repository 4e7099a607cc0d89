"""Options declared once: a config dataclass field that carries its command-line flag.

    depth: int = option(20, "Model depth: the one dial every other size is derived from.")

is the field's default, its `--help` text and panel, its flag spelling, a value typed as text (`auto` or a
count) and a range check run while the command line is parsed. `commands/_options.py` makes the typer
command's parameters from these fields and builds the config from the parsed values; the config's own
`validate()` keeps the checks that need several options at once. Nothing here imports typer or torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nanochat.common.errors import UsageError

CLI_KEY = "nanochat.cli"  # the key of a field's metadata that holds its `Cli`


@dataclass(frozen=True)
class AutoOrCount:
    """A value typed as `auto` or a positive whole number; the config holds -1 for auto."""

    unit: str  # what the number counts, for the error: "rows", "tokens"

    def show(self, value: int) -> str:
        """The command-line spelling of a config value (the shown default)."""
        return "auto" if value == -1 else str(value)

    def parse(self, text: str, flag: str) -> int:
        if text == "auto":
            return -1
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"{flag} {text!r} must be auto or a positive number of {self.unit}")
        return int(text)


@dataclass(frozen=True)
class Cli:
    """How one config field appears on the command line."""

    help: str
    panel: str | None = None  # the --help panel; None: the command's first ("Options")
    flags: tuple[str, ...] = ()  # click's declarations, e.g. ("--smear/--no-smear",); () = --field-name
    check: Callable[[str, Any], None] | None = None  # check(field name, value), e.g. common.checks.count, while parsing
    text: AutoOrCount | None = None  # typed as text, parsed into the field's value

    def flag(self, name: str) -> str:
        """The flag an error names: the first declared, else --field-name."""
        return self.flags[0].split("/")[0] if self.flags else "--" + name.replace("_", "-")


def option(default: Any, help: str, *, panel: str | None = None, flags: tuple[str, ...] = (), check: Callable[[str, Any], None] | None = None,
           text: AutoOrCount | None = None) -> Any:  # fmt: skip
    """A dataclass field with a command-line flag (a tuple default is stored as it is: tuples are immutable)."""
    return dataclasses.field(default=default, metadata={CLI_KEY: Cli(help, panel, tuple(flags), check, text)})


def cli_of(f: dataclasses.Field) -> Cli | None:
    """The field's command-line declaration, or None for a field set only in code."""
    return f.metadata.get(CLI_KEY)


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Cli]]:
    """The fields of a config dataclass that are command-line options, in declaration (= --help) order."""
    return [(f, c) for f in dataclasses.fields(cls) if (c := cli_of(f)) is not None]

