"""A stage's command made from its config dataclass: the options are the config's fields, declared once.

    @config_command(PretrainConfig, launch=True)
    def pretrain(cfg: PretrainConfig, launch: Launch, skip_restore: str = typer.Option("", hidden=True)) -> None: ...

gives `nanochat pretrain` one option per field that carries `common.options.option(...)` metadata (flag,
default, help, panel, range check, in the field order), then, with `launch`, the process and machine options
after --device (passed as one `commands._common.Launch`), then the function's own parameters (command-only
options such as hidden test flags), each placed after the field `after` names, else last.
The command receives the config built from the parsed values in one call (`build_config`).
typer reads a command's options from `inspect.signature`, so the command gets a `__signature__`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, Optional, TypeVar

import typer

from nanochat.commands._common import Launch, launch_parameters
from nanochat.commands._ranges import checked
from nanochat.common.options import Cli, cli_fields

C = TypeVar("C")


def _cli_annotation(hint: Any, cli: Cli) -> Any:
    """The type typer parses the option as: text for `auto`-or-count values, a list for a repeatable tuple."""
    if cli.text is not None:
        return str
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return list[args[0]]
    if type(None) in args:  # `int | None`: typer's own spelling
        return Optional[next(a for a in args if a is not type(None))]
    return hint


def _cli_default(default: Any, cli: Cli) -> Any:
    if cli.text is not None:
        return cli.text.show(default)
    return list(default) if isinstance(default, tuple) else default


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One typer option per command-line field of the config dataclass `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    params = []
    for f, cli in cli_fields(cls):
        option = typer.Option(_cli_default(f.default, cli), *cli.flags, help=cli.help, rich_help_panel=cli.panel,
                              callback=checked(cli.check) if cli.check else None)  # fmt: skip
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_cli_annotation(hints[f.name], cli)))
    return params


def config_values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The config's field values from the parsed option values (text parsed, lists as tuples); other keys are ignored."""
    out = {}
    for f, cli in cli_fields(cls):
        value = values[f.name]
        if cli.text is not None:
            value = cli.text.parse(value, cli.flag(f.name))
        elif isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out


def build_config(cls: type[C], values: Mapping[str, Any]) -> C:
    """The config from the parsed option values."""
    return cls(**config_values(cls, values))


def config_command(cls: type, after: Mapping[str, tuple[str, ...]] | None = None,
                   launch: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # fmt: skip
    """Make `func(cfg, [launch,] **own_options)` a typer command whose options are `cls`'s fields, the Launch
    options after --device when `launch`, and `func`'s own."""
    after = dict(after or {})
    shared = launch_parameters() if launch else []
    if launch:
        after["device"] = tuple(p.name for p in shared) + after.get("device", ())

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in list(inspect.signature(func).parameters.values())[1 + launch:]]  # fmt: skip
        by_name = {p.name: p for p in own + shared}
        placed = {name for names in after.values() for name in names}
        unknown = (placed - by_name.keys()) | (after.keys() - {f.name for f, _ in cli_fields(cls)})
        if unknown:  # a typo here would drop an option from the command silently
            raise TypeError(f"{func.__name__}: `after` names no such field or parameter: {sorted(unknown)}")
        params = []
        for p in config_parameters(cls):
            params += [p, *(by_name[name] for name in after.get(p.name, ()))]
        params += [p for p in own if p.name not in placed]

        def command(**values):
            mine = {p.name: values.pop(p.name) for p in own}
            if launch:
                mine["launch"] = Launch(**{p.name: values.pop(p.name) for p in shared})
            return func(build_config(cls, values), **mine)

        command.__name__, command.__qualname__, command.__doc__, command.__module__ = func.__name__, func.__qualname__, func.__doc__, func.__module__
        command.__signature__ = inspect.Signature(params)
        return command

    return decorate
