"""Checks of option values, shared by the commands and the config dataclasses' `validate()`.

Each check raises `UsageError` (exit code 2) with one line naming the flag, the value given and the
values allowed, so the message itself says how to fix the command line. Nothing here imports torch:
commands run these before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable

from nanochat.common.errors import UsageError


def flag(name: str) -> str:
    """The command-line spelling of a config field: num_iterations -> --num-iterations."""
    return "--" + name.replace("_", "-")


def count(name: str, value: int | None, low: int = 1, minus_one: str | None = None) -> None:
    """An integer option that must be `low` or more; -1 is also allowed when `minus_one` says what it means.

    None (the option left unset) always passes."""
    if value is None or (minus_one is not None and value == -1):
        return
    if value < low:
        allowed = (f"-1 ({minus_one}) or " if minus_one is not None else "") + f"{low} or more"
        raise UsageError(f"{flag(name)} {value} is out of range; use {allowed}")


def number(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    minus_one: str | None = None,
) -> None:
    """A real-valued option in [low, high] (`low_open`: low itself excluded); -1 is also allowed when
    `minus_one` says what it means. None passes; NaN and infinities never do."""
    if value is None or (minus_one is not None and value == -1):
        return
    ok = value == value and value not in (float("inf"), float("-inf"))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if ok:
        return
    if low is not None and high is not None:
        allowed = f"{'more than ' if low_open else ''}{low:g} to {high:g}"
    elif low is not None:
        allowed = f"a number {'above' if low_open else 'of at least'} {low:g}"
    elif high is not None:
        allowed = f"a number of at most {high:g}"
    else:
        allowed = "a finite number"
    if minus_one is not None:
        allowed = f"-1 ({minus_one}) or {allowed}"
    raise UsageError(f"{flag(name)} {value:g} is out of range; use {allowed}")


def one_of(name: str, value: str | None, choices: Iterable[str]) -> None:
    """A string option with a fixed set of values (None passes)."""
    choices = tuple(choices)
    if value is not None and value not in choices:
        listed = choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
        raise UsageError(f"{flag(name)} {value!r} is not one of the choices; use {listed}")


def resume(value: str) -> None:
    """--resume: auto, never or a step number."""
    if value not in ("auto", "never") and not value.isdigit():
        raise UsageError(f"--resume {value!r} must be auto, never or a step number")


def port(value: int) -> None:
    if not 1 <= value <= 65535:
        raise UsageError(f"--port {value} is not a port; use 1 to 65535")


def nproc(value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"--nproc {value} is not a process count; use --nproc 1 or more")
