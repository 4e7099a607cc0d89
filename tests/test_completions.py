"""Shell completions: the committed scripts are current, and completion really answers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "completions" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_scripts_are_up_to_date(shell):
    gen = _generator()
    committed = (ROOT / "completions" / gen.SHELLS[shell]).read_text()
    assert committed == gen.script(shell), "run: python completions/generate.py"


def _complete(words: str, cword: int) -> list[str]:
    env = dict(os.environ, _NANOCHAT_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword))
    out = subprocess.run([sys.executable, "-m", "nanochat"], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_completion_answers_commands_and_options():
    assert _complete("nanochat pre", 1) == ["pretrain"]
    assert set(_complete("nanochat tok", 1)) == {"tokenize-train", "tokenize-eval"}
    assert "--depth" in _complete("nanochat pretrain --de", 2)
    assert set(_complete("nanochat data ", 2)) >= {"download", "prepare-evals", "import", "list"}
