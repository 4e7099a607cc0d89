"""Stage options declared once, on the config dataclasses: each shows in its command's --help (flag, default,
panel, help text), the command line reaches the config, and no options give the dataclass's own defaults."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from nanochat.commands._options import config_command
from nanochat.common.options import cli_fields
from nanochat.train.pretrain_config import PretrainConfig
from nanochat.train.rl_config import RLConfig
from nanochat.train.sft_config import SFTConfig
from tests.conftest import run_cli

STAGES = [("pretrain", PretrainConfig), ("sft", SFTConfig), ("rl", RLConfig)]


def _help_rows(command: str) -> dict[str, tuple[str, str]]:
    """{first flag: (panel title, the row's text with its continuation lines)} from `nanochat COMMAND --help`."""
    r = run_cli(command, "--help", env={"COLUMNS": "320"})
    assert r.returncode == 0, r.stderr
    rows: dict[str, tuple[str, str]] = {}
    panel, flag = None, None
    for line in r.stdout.splitlines():
        s = line.strip()
        if s.startswith("╭─"):
            panel = s.strip("╭─╮ ").rstrip("─ ")
        elif s.startswith("│"):
            cell = s.strip("│ ")
            if cell.startswith("--"):
                flag = cell.split()[0]
                rows[flag] = (panel, cell)
            elif flag is not None:  # a wrapped help line
                rows[flag] = (panel, rows[flag][1] + " " + cell)
    return rows


def _shown_default(f: dataclasses.Field, flags: tuple[str, ...]) -> str | None:
    """What click shows as `[default: ...]` for the field's default, or None when it shows none."""
    value = f.default
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        if not flags or "/" not in flags[0]:
            return None  # a lone flag (--dry-run) shows no default
        on, off = flags[0].split("/")
        return (on if value else off).lstrip("-")
    if f.name in ("device_batch_size", "total_batch_size"):
        return "auto" if value == -1 else str(value)  # typed as auto or a count
    return str(value)


@pytest.mark.parametrize("command,cls", STAGES)
def test_every_config_option_is_in_help_with_its_default(command, cls):
    rows = _help_rows(command)
    fields = cli_fields(cls)
    assert len(fields) >= 20
    for f, cli in fields:
        flag = cli.flags[0].split("/")[0] if cli.flags else "--" + f.name.replace("_", "-")
        assert flag in rows, (command, flag)
        panel, text = rows[flag]
        assert panel == (cli.panel or "Options"), (flag, panel)
        assert " ".join(cli.help.split())[:60] in text, (flag, text)
        want = _shown_default(f, cli.flags)
        if want is None:
            assert "[default:" not in text, (flag, text)
        else:
            assert f"[default: {want}]" in text, (flag, want, text)


def test_pretrain_flags_reach_the_dry_run_plan():
    """The printed plan, computed by the trainer from the config: matrix LR 0.03 × √(2^17 / 2^19) = 0.015,
    4 rows of 256 tokens, depth 2 at aspect 64 = width 128 (one head of 128)."""
    r = run_cli("pretrain", "--dry-run", "--matrix-lr", "0.03", "--depth", "2", "--data", "demo", "--device", "cpu",
                "--total-batch-size", "131072", "--device-batch-size", "4", "--max-seq-len", "256", env={"COLUMNS": "200"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "matrix 0.015," in out and "effective LR Muon │ 0.015 " in out
    assert "2 / 128 / 1" in out
    assert "sequence length │ 256 " in out and "4 rows" in out
    assert "131,072 [--total-batch-size]" in out
    assert "LR scale √(B/B_ref) │ 0.5000" in out


def _parse(cls, args: list[str]):
    """The config a command declared from `cls` builds from `args` (and the exit code)."""
    got = []

    @config_command(cls)
    def stage(cfg) -> None:
        got.append(cfg)

    app = typer.Typer()
    app.command()(stage)
    r = CliRunner().invoke(app, args)
    return (got[0] if got else None), r


@pytest.mark.parametrize("cls", [PretrainConfig, SFTConfig, RLConfig])
def test_no_options_give_the_dataclass_defaults(cls):
    cfg, r = _parse(cls, [])
    assert r.exit_code == 0, r.output
    assert cfg == cls()


@pytest.mark.parametrize(
    "cls,args,want",
    [
        (PretrainConfig, ["--matrix-lr", "0.03", "--no-smear", "--device-batch-size", "auto", "--total-batch-size", "65536", "--n-kv-head", "2"],
         {"matrix_lr": 0.03, "smear": False, "device_batch_size": -1, "total_batch_size": 65536, "n_kv_head": 2}),
        (SFTConfig, ["--add", "a.jsonl", "--add", "b.jsonl:3", "--no-load-optimizer", "--matrix-lr", "0.01", "--skip-bad"],
         {"add": ("a.jsonl", "b.jsonl:3"), "load_optimizer": False, "matrix_lr": 0.01, "skip_bad": True}),
        (RLConfig, ["--task", "demo-arith", "--temperature", "0.7", "--num-samples", "4", "--run", "x"],
         {"task": "demo-arith", "temperature": 0.7, "num_samples": 4, "run": "x"}),
    ],
)  # fmt: skip
def test_a_flag_changes_its_field_and_no_other(cls, args, want):
    cfg, r = _parse(cls, args)
    assert r.exit_code == 0, r.output
    assert cfg == dataclasses.replace(cls(), **want)


@pytest.mark.parametrize(
    "cls,args,message",
    [
        (PretrainConfig, ["--seed", "-3"], "--seed -3 is out of range"),  # the declared range check, while parsing
        (RLConfig, ["--temperature", "-1"], "--temperature -1 is out of range"),
        (PretrainConfig, ["--device-batch-size", "many"], "--device-batch-size 'many' must be auto or a positive number of rows"),
    ],
)
def test_declared_checks_refuse_bad_values(cls, args, message):
    cfg, r = _parse(cls, args)
    assert cfg is None and r.exit_code != 0
    assert message in str(r.exception)


def _commands(group):
    for cmd in group.commands.values():
        yield from _commands(cmd) if hasattr(cmd, "commands") else (cmd,)


def test_every_command_parameter_has_a_real_type():
    # Older typer takes a parameter's type from typing.get_type_hints(callback), else from the signature as it
    # stands, and cannot read a postponed annotation there ("str" under `from __future__ import annotations`):
    # a command built with a __signature__ of strings broke the whole CLI on the GPU machine's typer.
    import inspect
    import typing

    from nanochat.cli import app

    group = typer.main.get_group(app)
    seen = 0
    for cmd in _commands(group):
        hints = typing.get_type_hints(cmd.callback, include_extras=True)
        for p in inspect.signature(cmd.callback).parameters.values():
            assert not isinstance(hints.get(p.name, p.annotation), str), f"nanochat {cmd.name}: parameter {p.name} is annotated {hints.get(p.name, p.annotation)!r}"
            seen += 1
    assert seen > 100  # every subcommand's options were looked at
