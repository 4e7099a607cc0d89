"""The error convention: a user error is one line that says what went wrong and how to fix it.

Raise `NanochatError("what happened; how to fix it")` anywhere in the library. The CLI prints it as
`error: ...` and exits 1, showing the traceback only with `--debug` or `NANOCHAT_DEBUG=1`.

Which one to raise: `UsageError` (exit 2) when the command line itself is wrong, whatever is on disk:
an unknown option or a value of the wrong type (click's own errors, also printed as one line), a value
out of range or outside a fixed set of choices (`--source chat`, `--data` of sft), flags that conflict.
`NanochatError` (exit 1) when the command line is fine but the state is not: a missing checkpoint,
tag or step, a data set that is not there (also a `--data NAME` that may name an imported set), no
tokenizer, a busy port, no network. `nanochat.common.checks` holds the shared range checks.
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
