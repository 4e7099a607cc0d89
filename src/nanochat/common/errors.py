"""The error convention: a user error is one line that says what went wrong and how to fix it.

Raise `NanochatError("what happened; how to fix it")` anywhere in the library. The CLI prints it as
`error: ...` and exits 1, showing the traceback only with `--debug` or `NANOCHAT_DEBUG=1`.
Bad command-line usage exits 2 (typer/click does this for unknown commands and options).
"""

from __future__ import annotations

import os

EXIT_USER_ERROR = 1
EXIT_USAGE = 2


class NanochatError(Exception):
    """A problem the user can fix; the message is one line that says how."""

    exit_code = EXIT_USER_ERROR


class UsageError(NanochatError):
    """Options that contradict each other or are out of range (exit code 2)."""

    exit_code = EXIT_USAGE


def debug_enabled() -> bool:
    return os.environ.get("NANOCHAT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
