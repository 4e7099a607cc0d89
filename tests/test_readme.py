"""The README's first ten minutes: its first command block, run word for word in a fresh virtual
environment on a fresh copy of the repository, ends with a chat answer; and CI runs exactly the
README's test block."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = "python3 -m pytest -q -p no:cacheprovider tests"


def bash_blocks() -> list[str]:
    """The ```bash blocks of README.md, in order."""
    return re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """The command lines of a block, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else "" for line in block.splitlines())
    return [line for line in lines if line]


def test_the_first_block_installs_from_the_clone_and_the_second_runs_the_tests():
    first, second = bash_blocks()[:2]
    assert commands(first) == [
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
        "pip install .",
        "nanochat speedrun --demo",
        'nanochat chat -p "Who are you?"',
    ]
    assert commands(second)[-1] == TEST_COMMAND


def test_ci_runs_exactly_the_readme_test_block():
    """Every line of the README's test block is a line of .ci/run (pip as `python3 -m pip install -q`), in order."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    want = [re.sub(r"^pip install ", "python3 -m pip install -q ", c) for c in commands(bash_blocks()[1])]
    at = [ci.index(w) if w in ci else -1 for w in want]
    assert -1 not in at, f"missing from .ci/run: {[w for w, i in zip(want, at) if i < 0]}"
    assert at == sorted(at) and ci[at[-1]] == TEST_COMMAND
    assert sum(TEST_COMMAND in line for line in ci) == 1


def _fresh_copy(dest: Path) -> Path:
    """The repository as a fresh clone has it: no build outputs, caches, virtual environments or git data."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv", ".pytest_cache", ".hypothesis")
    return Path(shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True))


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_readme_first_block_from_a_fresh_clone_ends_with_a_chat_answer(tmp_path, nanochat_home):
    """Run the block literally. The virtual environment sees the system's packages, so torch and the
    other dependencies are already satisfied and pip never reaches for the torch index (building
    nanochat itself may fetch setuptools from PyPI)."""
    clone = _fresh_copy(tmp_path / "nanochat")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_NUM_THREADS", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), NANOCHAT_HOME=str(nanochat_home), PIP_DISABLE_PIP_VERSION_CHECK="1")
    block = bash_blocks()[0]
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=clone, env=env, capture_output=True, text=True, timeout=2600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # the nanochat that ran is the one the block installed into the environment, not a source tree
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import nanochat; print(nanochat.__file__)"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    assert "speedrun done" in r.stdout and (nanochat_home / "report" / "report.md").is_file()
    assert "chatting with rl/demo" in r.stderr  # RL is a default stage: `nanochat chat` picks its newer checkpoint
    answer = r.stdout.rstrip("\n").splitlines()[-1]
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 2, f"the last line is not a chat answer: {answer!r}"
    print(f"README first block: the chat answered {answer!r}")
