"""Rank-0 console output with rich: colour only on a terminal, NO_COLOR honoured.

`print0` and `console()` are what every command and loop uses; on ranks other than 0 they are silent,
so multi-process runs print each line once.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


@lru_cache(maxsize=8)
def _console_for(stream_id: int, stderr: bool):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    no_color = "NO_COLOR" in os.environ
    return Console(
        file=stream,
        no_color=no_color,
        highlight=False,
        soft_wrap=True,
        force_terminal=None,
        color_system=None if no_color else "auto",
    )


def console(stderr: bool = False):
    """The rich console for the current sys.stdout/sys.stderr (tests may swap those)."""
    return _console_for(id(sys.stderr if stderr else sys.stdout), stderr)


def print0(*args: Any, **kwargs: Any) -> None:
    """Print on rank 0 only (rich markup allowed)."""
    if is_rank0():
        console().print(*args, **kwargs)


def warn0(message: str) -> None:
    if is_rank0():
        console(stderr=True).print(f"[yellow]warning:[/yellow] {message}")


def error_line(message: str) -> None:
    """The one-line error of the CLI's error convention (printed on every rank: each may fail alone)."""
    from rich.markup import escape

    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}")


def table(title: str, rows: list[tuple[str, Any]] | list[list[Any]], headers: list[str] | None = None):
    """A rich table from rows; two-column key/value when headers is None.

    Cells are plain text: brackets such as "[--num-iterations]" are shown, not read as rich markup. A cell wider
    than the terminal wraps onto more lines instead of being cut with an ellipsis (paths must stay whole)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title), show_header=headers is not None, title_justify="left")
    cols = headers or ["", ""]
    for i, h in enumerate(cols):
        t.add_column(h, justify="left" if i == 0 else "right" if headers else "left", overflow="fold")
    for r in rows:
        t.add_row(*[escape(str(x)) for x in r])
    return t
