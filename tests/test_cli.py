"""The command surface: help without torch, exit codes, the error convention."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import run_cli

COMMANDS = ["env", "data", "tokenize-train", "tokenize-eval", "pretrain", "sft", "rl", "eval", "chat", "serve", "speedrun", "report", "sweep"]
DATA_COMMANDS = ["download", "prepare-evals", "import", "list"]


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from nanochat import cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(cli.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for c in %r:\n"
        "    r = CliRunner().invoke(cli.app, [c, '--help'])\n"
        "    assert r.exit_code == 0, (c, r.output)\n"
        "for c in %r:\n"
        "    r = CliRunner().invoke(cli.app, ['data', c, '--help'])\n"
        "    assert r.exit_code == 0, (c, r.output)\n"
        "print('torch' in sys.modules)\n" % (COMMANDS, DATA_COMMANDS)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_level_help_lists_every_command():
    r = run_cli("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout, c
    assert "Examples:" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples(command):
    r = run_cli(command, "-h")
    assert r.returncode == 0, r.stderr
    assert "Examples:" in r.stdout or command == "data"


def test_bare_command_prints_help():
    r = run_cli()
    assert r.returncode == 0
    assert "Usage:" in r.stdout


def test_version():
    from nanochat import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"nanochat {__version__}"


def test_unknown_command_and_option_exit_2_with_hint():
    r = run_cli("pretrian")
    assert r.returncode == 2
    assert "No such command" in r.stderr and "--help" in r.stderr.replace("-h ", "--help ") or "-h" in r.stderr
    r = run_cli("env", "--no-such-option")
    assert r.returncode == 2
    assert "No such option" in r.stderr


def test_user_error_is_one_line_without_traceback(monkeypatch):
    r = run_cli("sweep", "miniseries")
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = run_cli("--debug", "sweep", "miniseries")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "error:" in r.stderr
    r = run_cli("sweep", "miniseries", env={"NANOCHAT_DEBUG": "1"})
    assert "Traceback" in r.stderr


def test_python_dash_m_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "nanochat", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nanochat ")
