"""Write the bash, zsh and fish completion scripts for `nanochat` into this folder.

    python completions/generate.py

The scripts are generated from the CLI (typer/click shell completion): they call `nanochat` back with
_NANOCHAT_COMPLETE set, so they stay right as commands and options change. tests/test_completions.py
fails when the files here differ from what this prints.
"""

from __future__ import annotations

from pathlib import Path

SHELLS = {"bash": "nanochat.bash", "zsh": "_nanochat", "fish": "nanochat.fish"}


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="nanochat", complete_var="_NANOCHAT_COMPLETE", shell=shell).rstrip("\n") + "\n"


def main() -> None:
    here = Path(__file__).resolve().parent
    for shell, name in SHELLS.items():
        (here / name).write_text(script(shell))
        print(f"wrote completions/{name}")


if __name__ == "__main__":
    main()
