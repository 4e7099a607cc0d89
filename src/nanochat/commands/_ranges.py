"""Range checks attached to option declarations: `typer.Option(42, callback=ranges.count(low=0))`.

The check runs while click parses the command line, before the command body, so an out-of-range value is
refused (one line, exit 2, see common.checks for the wording) before anything is loaded or any other
error (a missing checkpoint, say) can hide it. Checks that need several options at once, or a config's
own rules, stay in the command or in the config's `validate()`.
"""

from functools import partial
from typing import Any, Callable, Optional

import typer

from nanochat.common import checks


def checked(check: Callable[[str, Any], None]) -> Callable[..., Any]:
    """The option callback that runs `check(option name, value)`, a common.checks function (a config field's
    declared check, say: `functools.partial(checks.count, low=0)`), and passes the value on."""

    def callback(param: typer.CallbackParam, value: Any) -> Any:
        check(param.name, value)
        return value

    return callback


def count(low: int = 1, minus_one: Optional[str] = None) -> Callable[..., Any]:
    """An integer of `low` or more (counts, steps, seeds); -1 too when `minus_one` says what it means."""
    return checked(partial(checks.count, low=low, minus_one=minus_one))


def number(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False, minus_one: Optional[str] = None) -> Callable[..., Any]:
    """A finite real in [low, high] (`low_open`: above low); -1 too when `minus_one` says what it means."""
    return checked(partial(checks.number, low=low, high=high, low_open=low_open, minus_one=minus_one))


def rate() -> Callable[..., Any]:
    """A ratio or budget that must be above 0 (tokens per parameter, say)."""
    return number(low=0, low_open=True)


def fraction() -> Callable[..., Any]:
    """A share from 0 to 1."""
    return number(low=0, high=1)


def port(param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
    """A TCP port, 1 to 65535."""
    if value is not None:
        checks.port(value)
    return value
