"""The error convention: a user error is one line that says what went wrong and how to fix it.

Raise `NanochatError("what happened; how to fix it")` anywhere in the library. The CLI prints it as
`error: ...` and exits 1, showing the traceback only with `--debug` or `NANOCHAT_DEBUG=1`.

Which one to raise: `UsageError` (exit 2) when the command line itself is wrong, whatever is on disk:
an unknown option or a value of the wrong type (click's own errors, also printed as one line), a value
out of range or outside a fixed set of choices (`--source chat`, `--data` of sft), flags that conflict.
`NanochatError` (exit 1) when the command line is fine but the state is not: a missing checkpoint,
tag or step, a data set that is not there (also a `--data NAME` that may name an imported set), no
tokenizer, a busy port, no network. `nanochat.common.checks` holds the shared range checks (commands
attach them to their options with `commands/_ranges.py`). A file-system error no command caught
(read-only, full disk, permissions) is turned into the one line by the CLI, see `os_error_line`.
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


# what an OS error on a path means for the user, and how to fix it; `{fix}` is where to write instead
_OS_ERRORS = {
    "EROFS": ("cannot write {path}: read-only file system", "{fix}"),
    "ENOSPC": ("cannot write {path}: no space left on the device", "free some space there, or {fix} on another disk"),
    "EDQUOT": ("cannot write {path}: disk quota exceeded", "free some space there, or {fix} on another disk"),
    "EACCES": ("permission denied on {path}", "check its permissions, or {fix}"),
    "EPERM": ("operation not permitted on {path}", "check its permissions, or {fix}"),
    "EISDIR": ("{path} is a folder, not a file", "remove or rename that folder, or {fix}"),
    "ENOTDIR": ("{path} is not a folder (a file is in the way)", "remove or rename that file, or {fix}"),
    "ENAMETOOLONG": ("the path {path} is too long", "{fix} with a shorter path"),
    "ENOENT": ("{path}: no such file or folder", "check the path, or {fix}"),
    "EEXIST": ("{path} already exists", "remove or rename it, or {fix}"),
}


def os_error_line(e: OSError, home: str | None = None, out: str | None = None) -> str | None:
    """The one-line message for an OS error on a path that escaped a command, or None when it is no
    file-system error (a bug then, shown with its traceback). `home` is NANOCHAT_HOME and `out` the
    command's --out, which the fix points at: set NANOCHAT_HOME to a writable folder, or pass --out."""
    import errno

    name = errno.errorcode.get(e.errno or 0)
    if name not in _OS_ERRORS:
        return None
    path = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        path = f"{e.filename} (-> {e.filename2})"
    what, hint = _OS_ERRORS[name]
    return f"{what.format(path=path)}; {hint.format(fix=_elsewhere(e.filename, home, out))}"


def _under(path: object, root: str | None) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)) or root is None:
        return False
    path, root = os.path.realpath(os.fsdecode(path)), os.path.realpath(os.fsdecode(root))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _elsewhere(path: object, home: str | None, out: str | None) -> str:
    """Where to write instead of `path`: another --out when it is the export's, another NANOCHAT_HOME otherwise."""
    if _under(path, out):
        return "pass another --out"
    if _under(path, home) or path is None:
        return "set NANOCHAT_HOME to a writable folder" + (" or pass another --out" if out and path is None else "")
    return "use another path"
