"""Run untrusted Python (HumanEval solutions, a code tool) in a locked-down child process.

`run_python(code)` returns an `ExecutionResult`; it never raises for anything the code does.

How the code is contained (secure mode, the default; needs bubblewrap, `apt-get install bubblewrap`):
- `bwrap` gives the child new pid, network, ipc, uts and cgroup namespaces: no network at all (not even
  127.0.0.1 of the host), no view of the host's processes, and when bwrap goes, every process in the sandbox
  goes with it (`--die-with-parent`; the sandbox's pid 1 takes the rest down).
- The file system is built from nothing: `/usr` and the `/bin`, `/lib*` links read-only, the Python
  installation's prefix read-only at its own path, a fresh `/proc` and minimal `/dev`, private size-limited
  tmpfs `/tmp` and `/dev/shm`, and a fresh size-limited tmpfs `/sandbox` as the working directory (it
  vanishes with the sandbox, so nothing is left on the host). The code itself is copied in read-only at `/code/main.py`.
  Nothing else of the host (home directories, /etc, /work, the caller's temporary files) exists inside.
  Its stdin is the read end of a pipe (no host file behind it).
- The environment is cleared (`--clearenv`; bwrap itself is started with the same minimal environment, so the
  caller's secrets are not even in the sandbox's pid 1): PATH, HOME=/tmp, LANG only. `--new-session` detaches
  it from any terminal. The interpreter runs with `-I -S -u`: isolated, standard library only (no
  site-packages, so results do not depend on what happens to be installed; `exit()` is not defined, use
  `sys.exit()`), unbuffered so output printed before a crash or a timeout is kept.
- `memory_mb` is one budget for the whole run, whatever it forks (see "memory containment" below): a cgroup
  v2 with memory.max and pids.max when one can be made (a delegated cgroup, or a systemd scope through
  `systemd-run`); where none can, the budget is split: the tmpfs mounts get a share, and the rest is divided
  into per-process address-space limits with at most as many processes as shares of at least
  `FALLBACK_SHARE_MB`, so the processes together can never hold more than the budget.
- A trusted bootstrap inside the sandbox sets the rlimits before the user's code starts: CPU seconds,
  address space, file size, process count, open files, no core files. It is a `-c` program
  that then `exec`s the user's script, so no `preexec_fn` is needed and `run_python` is safe to call from
  many threads at once.
- When the caller is root, the bootstrap also drops to a random unprivileged uid used for this run only
  (bwrap runs privileged, without a user namespace, and grants only CAP_SETUID/CAP_SETGID for the drop).
  Two reasons: the kernel never enforces RLIMIT_NPROC for uid 0, and a uid of its own means the code cannot
  signal or write anything of anyone else's. When the caller is not root, bwrap runs in an unprivileged user
  namespace, where (since Linux 5.14) RLIMIT_NPROC counts only the sandbox's own tasks; on older kernels it
  counts all of the caller's tasks, so their number is added to the allowance.
- The parent enforces a wall-clock timeout and kills the whole process group; stdout and stderr are read
  as they come and each is capped (`max_output_bytes`): a program that prints more is stopped at once and
  the result says so, so a flood costs neither time nor memory.
- A seccomp filter (x86_64 and aarch64) refuses new user namespaces (clone/unshare with CLONE_NEWUSER;
  clone3, whose flags it cannot see, answers ENOSYS so libc falls back to clone), io_uring, bpf, keyrings,
  ptrace, userfaultfd, perf events, mounts and module loading, and kills a process that switches to another
  syscall ABI (32-bit `int 0x80`, x32).

Residual risks (documented, not hidden): the rest of the kernel's system calls are reachable (a kernel bug is
an escape); /usr and the interpreter's files are readable; on CPUs other than x86_64 and aarch64 there is no
seccomp filter; in the rare case a program exits with a code above 128 it reads as a signal. Without a cgroup,
memory the kernel spends on the run's behalf (page tables, pipe buffers, bwrap's own two small processes) is
outside the budget.

Insecure mode (`allow_insecure=True`, only when bubblewrap is missing or cannot make namespaces): the same
bootstrap, rlimits, memory containment, uid drop (as root; refused if that uid cannot run the interpreter;
after the run every process of that uid is killed), timeout, output caps and scrubbed environment, in a fresh
host temporary directory that is deleted afterwards — but with the host's network, file system and process
table in view, and no seccomp filter. A warning is printed once per process.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from nanochat.common.errors import NanochatError

MAX_OUTPUT_BYTES = 64 * 1024  # per stream
MAX_INPUT_BYTES = 8 * 1024 * 1024  # code, and stdin
TMPFS_BYTES = 64 * 1024 * 1024  # size of each of the sandbox's tmpfs /tmp and /sandbox
SHM_BYTES = 16 * 1024 * 1024  # size of its /dev/shm
MAX_FILE_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: the largest file the code may write
MAX_PROCESSES = 32  # RLIMIT_NPROC allowance (threads count too)
MAX_OPEN_FILES = 64  # RLIMIT_NOFILE
FALLBACK_SHARE_MB = 64  # without a cgroup: the smallest address space one process gets (Python needs ~16)
LAUNCHER_TASKS = 2  # bwrap's own processes (monitor and the sandbox's pid 1), in the cgroup's pids.max too
CGROUP_ENV = "NANOCHAT_SANDBOX_CGROUP"  # a delegated cgroup v2 folder to make each run's cgroup under
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
WORK_DIR = "/sandbox"
CODE_PATH = "/code/main.py"

# Runs first inside the sandbox (trusted code, ours): drop the uid if asked, set the limits, then exec the
# user's script. argv: uid cpu_seconds address_space_bytes file_bytes nproc nofile, then the command to exec.
_BOOTSTRAP = """\
import os, resource as R, sys
uid, cpu, mem, fsize, nproc, nofile = (int(a) for a in sys.argv[1:7])
if uid >= 0:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
for lim, soft, hard in ((R.RLIMIT_CORE, 0, 0), (R.RLIMIT_CPU, cpu, cpu + 1), (R.RLIMIT_AS, mem, mem),
                        (R.RLIMIT_FSIZE, fsize, fsize), (R.RLIMIT_NPROC, nproc, nproc),
                        (R.RLIMIT_NOFILE, nofile, nofile)):
    R.setrlimit(lim, (soft, hard))
os.execv(sys.argv[7], sys.argv[7:])
"""


@dataclass
class ExecutionResult:
    """What happened to one run. `error` is one line (the exception line of a traceback, or why it was stopped)."""

    success: bool
    stdout: str
    stderr: str
    error: str | None
    timed_out: bool
    memory_exceeded: bool
    exit_code: int | None
    output_truncated: bool = False


def run_python(
    code: str,
    timeout: float = 5.0,
    memory_mb: int = 256,
    allow_insecure: bool = False,
    stdin: str | bytes | None = None,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> ExecutionResult:
    """Run `code` as a Python script in the sandbox and report what it did.

    `timeout` is wall-clock seconds for the whole run; `memory_mb` is the memory budget of the whole run (all
    its processes and the files it writes in its tmpfs mounts; see `memory_containment`); `stdin` is fed to
    the program through a pipe (empty if None). Raises NanochatError only for bad arguments or when bubblewrap is unusable
    and `allow_insecure` is False.
    """
    if not isinstance(code, str):
        raise NanochatError(f"run_python needs the code as a str, got {type(code).__name__}; pass the source text")
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout <= 3600 and math.isfinite(timeout)):
        raise NanochatError(f"sandbox timeout must be between 0 and 3600 seconds, got {timeout!r}")
    if not (isinstance(memory_mb, int) and 64 <= memory_mb <= 1 << 20):
        raise NanochatError(f"sandbox memory_mb must be an int of at least 64 (MiB), got {memory_mb!r}")
    if not (isinstance(max_output_bytes, int) and max_output_bytes > 0):
        raise NanochatError(f"sandbox max_output_bytes must be a positive int, got {max_output_bytes!r}")
    stdin_bytes = stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else (stdin or b"")
    code_bytes = code.encode("utf-8", "surrogateescape")
    if len(code_bytes) > MAX_INPUT_BYTES or len(stdin_bytes) > MAX_INPUT_BYTES:
        raise NanochatError(f"sandbox code and stdin are limited to {MAX_INPUT_BYTES} bytes each; pass less")

    problem = bwrap_problem()
    if problem is not None:
        if not allow_insecure:
            raise NanochatError(
                f"cannot sandbox Python code: {problem}; install bubblewrap (apt-get install bubblewrap) "
                "or, on a machine you do not mind exposing, opt into the insecure mode"
            )
        _warn_insecure_once(problem)

    uid = _run_uid()
    containment = memory_containment()
    limits = _limits(uid, timeout, memory_mb, shared=containment.kind != "rlimit", secure=problem is None)
    exe = _python_executable()
    with tempfile.TemporaryDirectory(prefix="nanochat-sandbox-") as host_dir:
        group = _CgroupRun(containment.parent, limits) if containment.kind == "cgroup" else None
        try:
            prefix = group.launcher(exe) if group else (_systemd_argv(limits) if containment.kind == "systemd" else [])
            env = _systemd_env() if containment.kind == "systemd" else None
            # stdin is the read end of a pipe: nothing of the host behind it, nothing the code could write to
            stdin_read, stdin_write = os.pipe()
            sandbox_init = None
            try:
                if problem is None:
                    proc, sandbox_init = _spawn_bwrap(exe, code_bytes, uid, limits, stdin_read, host_dir, prefix, env)
                else:
                    argv, work = _insecure_argv(exe, host_dir, code, uid, limits)
                    proc = _spawn(prefix + argv, stdin_read, cwd=work, pass_fds=(), env=env)
            except BaseException:
                os.close(stdin_write)
                raise
            finally:
                os.close(stdin_read)
            try:
                out, err, timed_out, flooded = _collect(proc, timeout, max_output_bytes, stdin_write, stdin_bytes)
            finally:
                _kill_everything(proc, uid, secure=problem is None, sandbox_init=sandbox_init)
            stopped = group.oom_killed() if group else (containment.kind == "systemd" and _killed_from_outside(proc.returncode, timed_out, flooded))
        finally:
            if group:
                group.remove()
    return _result(proc.returncode, out, err, timed_out, flooded, timeout, memory_mb, max_output_bytes, limits, stopped)


# ---------------------------------------------------------------------------------------------------------
# launching


def _spawn(argv: list[str], stdin_fd: int, cwd: str, pass_fds: tuple[int, ...], env: dict[str, str] | None = None) -> subprocess.Popen:
    # The same minimal environment for the launcher itself: the sandbox's pid 1 (bwrap) keeps its environment
    # in /proc/1/environ, so the caller's environment must never reach it.
    return subprocess.Popen(
        argv,
        stdin=stdin_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env or dict(SANDBOX_ENV),
        start_new_session=True,  # its own process group, killed as a whole
        close_fds=True,
        pass_fds=pass_fds,
    )


def _spawn_bwrap(
    exe: str, code: bytes, uid: int, limits: _Limits, stdin_fd: int, tmp_dir: str | None, prefix: list[str],
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, tuple[int, str] | None]:
    """Start bwrap (after `prefix`: what puts it in the run's cgroup, if anything); the code and the seccomp
    filter go in through unlinked files that bwrap reads by fd.

    Also returns the host pid and start time of the sandbox's pid 1 (from bwrap's --info-fd), so the caller
    can wait for the whole sandbox to be gone, not just bwrap.
    """
    files = []
    info_read, info_write = os.pipe()
    try:
        for data in (code, seccomp_program()):
            if data is None:
                files.append(None)
                continue
            f = tempfile.TemporaryFile(dir=tmp_dir)
            f.write(data)
            f.seek(0)
            files.append(f)
        code_fd, seccomp_fd = (f.fileno() if f is not None else None for f in files)
        argv = _bwrap_argv(exe, code_fd, uid, limits, seccomp_fd)
        argv[1:1] = ["--info-fd", str(info_write)]
        fds = tuple(f.fileno() for f in files if f is not None) + (info_write,)
        proc = _spawn(prefix + argv, stdin_fd, cwd="/", pass_fds=fds, env=env)
        os.close(info_write)
        info_write = -1
        return proc, _sandbox_init(info_read)
    finally:
        for f in files:
            if f is not None:
                f.close()
        for fd in (info_read, info_write):
            if fd >= 0:
                os.close(fd)


def _sandbox_init(info_fd: int) -> tuple[int, str] | None:
    """Read bwrap's JSON info (it writes it right after creating the sandbox, then closes the pipe)."""
    import json

    data = b""
    deadline = time.monotonic() + 10
    with selectors.DefaultSelector() as sel:
        sel.register(info_fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(info_fd, 4096)
            if not chunk:
                break
            data += chunk
    try:
        pid = int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None  # bwrap failed before creating the sandbox; its exit status says why
    start = _start_time(pid)
    return (pid, start) if start is not None else None


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time), None if the process is gone or a zombie."""
    try:
        stat_line = open(f"/proc/{pid}/stat", "rb").read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat_line[stat_line.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] in ("Z", "X") else fields[19]


def _python_executable() -> str:
    """The base interpreter (not a venv's wrapper): its prefix is all the sandbox needs to bind."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.join(sys.base_exec_prefix, "bin", name), os.path.realpath(sys.executable)):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise NanochatError(f"cannot find the Python interpreter to sandbox (looked for {name} under {sys.base_exec_prefix})")


def _run_uid() -> int:
    """A fresh unprivileged uid for this run when we are root (-1: keep ours)."""
    if os.geteuid() != 0:
        return -1
    return (1 << 30) + secrets.randbelow(1 << 30)


@dataclass(frozen=True)
class _Limits:
    cpu_seconds: int
    address_space: int  # RLIMIT_AS of each process
    file_bytes: int
    nproc: int  # RLIMIT_NPROC: the run's processes and threads
    nofile: int
    memory_bytes: int  # the whole run's budget (a cgroup's memory.max)
    tmp_bytes: int = TMPFS_BYTES  # sizes of the sandbox's tmpfs /tmp, /sandbox and /dev/shm
    work_bytes: int = TMPFS_BYTES
    shm_bytes: int = SHM_BYTES
    allowance: int = MAX_PROCESSES  # nproc less the caller's own tasks that older kernels count too


def _limits(uid: int, timeout: float, memory_mb: int, shared: bool = False, secure: bool = True) -> _Limits:
    """The run's limits. `shared`: a cgroup holds the whole run to `memory_mb`, so each process may use all of it.

    Without one, files in the tmpfs mounts are memory too: they get an eighth (/tmp, /sandbox) and a sixteenth
    (/dev/shm) of the budget at most; what is left is split into equal address-space shares of at least
    FALLBACK_SHARE_MB, one per allowed process, so that every process at its limit together still fit.
    """
    budget = memory_mb * 1024 * 1024
    cpu = math.ceil(timeout) + 1
    if shared:
        allowance, address_space, tmp, work, shm = MAX_PROCESSES, budget, TMPFS_BYTES, TMPFS_BYTES, SHM_BYTES
    else:
        tmp = work = min(TMPFS_BYTES, budget // 8)
        shm = min(SHM_BYTES, budget // 16)
        left = budget - tmp - work - shm
        allowance = max(1, min(MAX_PROCESSES, left // (FALLBACK_SHARE_MB * 1024 * 1024)))
        address_space = left // allowance
    nproc = allowance
    if uid < 0:  # our own uid
        if secure and _kernel_at_least(5, 14):
            nproc += 1  # in bwrap's user namespace only the sandbox's tasks count: its pid 1 too
        else:  # RLIMIT_NPROC counts all of the caller's tasks
            nproc += _count_tasks(os.getuid())
    return _Limits(cpu, address_space, MAX_FILE_BYTES, nproc, MAX_OPEN_FILES, budget, tmp, work, shm, allowance)


def _kernel_at_least(major: int, minor: int) -> bool:
    import platform

    try:
        found = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


def _count_tasks(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _bootstrap_argv(exe: str, uid: int, limits: _Limits, script: str) -> list[str]:
    return [
        exe, "-I", "-S", "-c", _BOOTSTRAP,
        str(uid), str(limits.cpu_seconds), str(limits.address_space), str(limits.file_bytes),
        str(limits.nproc), str(limits.nofile),
        exe, "-I", "-S", "-u", script,
    ]  # fmt: skip


def _bwrap_argv(exe: str, code_fd: int, uid: int, limits: _Limits, seccomp_fd: int | None) -> list[str]:
    privileged = os.geteuid() == 0
    argv = [shutil.which("bwrap") or "bwrap"]
    if privileged:
        # No user namespace: uid 0 inside would still be uid 0 to the kernel's RLIMIT_NPROC check. The
        # bootstrap drops to `uid` instead; bwrap grants only the two capabilities that needs.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"] + (["--disable-userns"] if _bwrap_supports("--disable-userns") else [])
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    for key, value in SANDBOX_ENV.items():
        argv += ["--setenv", key, value]
    argv += _filesystem_argv(exe)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm"]  # POSIX semaphores (multiprocessing)
    argv += ["--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    argv += ["--perms", "0777", "--size", str(limits.work_bytes), "--tmpfs", WORK_DIR]
    argv += ["--perms", "0755", "--dir", os.path.dirname(CODE_PATH)]
    argv += ["--perms", "0444", "--ro-bind-data", str(code_fd), CODE_PATH]
    # bwrap's own root and /dev are tmpfs without a size limit (writable by the caller's uid in a user
    # namespace): read-only once everything is mounted, so only the sized tmpfs mounts take writes
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", WORK_DIR, "--"]
    return argv + _bootstrap_argv(exe, uid, limits, CODE_PATH)


def _filesystem_argv(exe: str) -> list[str]:
    """Read-only /usr, the host's /bin, /sbin, /lib* (links stay links), and the interpreter's prefix."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.dirname(os.path.dirname(exe))  # <prefix>/bin/pythonX.Y
    roots = {os.path.realpath(p) for p in (prefix, sys.base_prefix, sys.base_exec_prefix)}
    covered = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    made: set[str] = set()
    for root in sorted(roots):
        if any(root == c or root.startswith(c + "/") for c in covered):
            continue
        # parents are made world-traversable: the host's may be private (/root is 0700)
        parts = root.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                argv += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        argv += ["--ro-bind", root, root]
        covered.append(root)
    return argv


def _insecure_argv(exe: str, host_dir: str, code: str, uid: int, limits: _Limits) -> tuple[list[str], str]:
    if uid >= 0 and not _others_can_run(exe):
        # As root we only run untrusted code under a throwaway uid; that uid must be able to run the interpreter.
        raise NanochatError(
            f"the insecure mode runs code as an unprivileged user, who cannot run {exe} (a parent directory is "
            "private); install bubblewrap (apt-get install bubblewrap), or use a Python installed outside private "
            "directories"
        )
    script = os.path.join(host_dir, "main.py")
    with open(script, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(code)
    os.chmod(script, 0o444)
    work = os.path.join(host_dir, "work")
    os.mkdir(work)
    os.chmod(host_dir, 0o755)
    if uid >= 0:
        os.chown(work, uid, uid)
    return _bootstrap_argv(exe, uid, limits, script), work


def _others_can_run(exe: str) -> bool:
    """Whether a user with no relation to the file's owners can reach and execute `exe`."""
    path = os.path.realpath(exe)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# memory containment: one budget for the whole run (probed once per process)
#
# A cgroup v2 of its own for each run, made under a delegated cgroup: the folder NANOCHAT_SANDBOX_CGROUP names
# (an administrator made it and enabled the memory and pids controllers for its children), or else our own
# cgroup if it already enables them. Else a systemd scope (`systemd-run --scope`, `--user` when not root)
# with MemoryMax and TasksMax, if a probe shows systemd really applies them. Else the rlimit split (_limits).

# Runs first (trusted code, ours): moves itself into the run's cgroup, then becomes the launcher, so that
# everything the run starts is in the cgroup from its first instruction. argv: cgroup.procs, then the command.
_JOIN_CGROUP = """\
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class Containment:
    """How `memory_mb` holds for a whole run: "cgroup" (under `parent`), "systemd", or "rlimit" (`why` not a cgroup)."""

    kind: str
    parent: str | None = None
    why: str = ""


_containment_lock = threading.Lock()
_containment: list[Containment | str] = []


def memory_containment() -> Containment:
    """The way this machine holds a run to its memory budget. Probed once per process.

    Raises NanochatError when NANOCHAT_SANDBOX_CGROUP is set but cannot be used (a setting to fix, not to ignore).
    """
    with _containment_lock:
        if not _containment:
            _containment.append(_probe_containment())
        found = _containment[0]
    if isinstance(found, str):
        raise NanochatError(found)
    return found


def _probe_containment() -> Containment | str:
    explicit = os.environ.get(CGROUP_ENV, "").strip()
    if explicit:
        problem = _cgroup_parent_problem(explicit)
        if problem is not None:
            return f"{CGROUP_ENV}={explicit} cannot hold the sandbox: {problem}; fix that cgroup or unset {CGROUP_ENV}"
        return Containment("cgroup", explicit)
    own = _own_cgroup_dir()
    reasons = []
    if own is None:
        reasons.append("no cgroup v2 is mounted for this process")
    else:
        problem = _cgroup_parent_problem(own)
        if problem is None:
            return Containment("cgroup", own)
        reasons.append(problem)
    problem = _systemd_problem()
    if problem is None:
        return Containment("systemd")
    reasons.append(problem)
    return Containment("rlimit", why="; ".join(reasons))


def _own_cgroup_dir(proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The folder of this process's cgroup v2 (the "0::" line of /proc/self/cgroup under the cgroup2 mount)."""
    try:
        with open(proc_cgroup) as f:
            rel = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if rel is None:
        return None
    for fields in mounts:
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) <= sep + 1 or fields[sep + 1] != "cgroup2":
            continue
        root, point = fields[3].rstrip("/"), fields[4]
        if rel == root or rel.startswith(root + "/") or not root:
            return os.path.normpath(point + "/" + rel[len(root) :])
    return None


def _cgroup_parent_problem(path: str) -> str | None:
    """None when a child cgroup with memory and pids limits can be made under `path`, else why not."""
    try:
        with open(os.path.join(path, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
    except OSError:
        return f"{path} is not a cgroup v2 folder"
    missing = sorted({"memory", "pids"} - enabled)
    if missing:
        return f"the cgroup {path} does not enable the {' and '.join(missing)} controller for its children"
    probe = os.path.join(path, f"nanochat-probe-{secrets.token_hex(6)}")
    try:
        os.mkdir(probe)
        try:
            with open(os.path.join(probe, "memory.max"), "w") as f:
                f.write(str(64 << 20))
        finally:
            os.rmdir(probe)
    except OSError as e:
        return f"cannot make a cgroup under {path} ({e.strerror})"
    return None


class _CgroupRun:
    """The cgroup of one run: made under `parent` with the run's budget; `remove()` kills what is left and deletes it."""

    def __init__(self, parent: str, limits: _Limits):
        self.path = os.path.join(parent, f"nanochat-sandbox-{secrets.token_hex(8)}")
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise NanochatError(f"cannot make the sandbox's cgroup under {parent} ({e.strerror}); fix its permissions or unset {CGROUP_ENV}") from None
        try:
            self._write("memory.max", limits.memory_bytes)
            self._write("pids.max", limits.allowance + LAUNCHER_TASKS)
            # no swap (the budget is memory, not memory plus disk), and an out-of-memory kill takes the whole run
            for name, value in (("memory.swap.max", 0), ("memory.oom.group", 1)):
                if os.path.exists(os.path.join(self.path, name)):
                    self._write(name, value)
        except OSError as e:
            self.remove()
            raise NanochatError(f"cannot set the limits of the sandbox's cgroup {self.path} ({e.strerror}); fix the cgroup or unset {CGROUP_ENV}") from None

    def _write(self, name: str, value: int) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def launcher(self, exe: str) -> list[str]:
        """The argv prefix that joins this cgroup and then execs the rest of the command line."""
        return [exe, "-I", "-S", "-c", _JOIN_CGROUP, os.path.join(self.path, "cgroup.procs")]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for going over memory.max."""
        try:
            with open(os.path.join(self.path, "memory.events")) as f:
                counts = dict(line.split() for line in f if len(line.split()) == 2)
        except (OSError, ValueError):
            return False
        return any(counts.get(k, "0") != "0" for k in ("oom_kill", "oom_group_kill"))

    def remove(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    from nanochat.common.logging import warn0

                    warn0(f"could not remove the sandbox's cgroup {self.path}; remove it with rmdir once its processes are gone")
                    return
            # still populated (e.g. an insecure-mode process that left the process group): kill what is in it
            try:
                if os.path.exists(os.path.join(self.path, "cgroup.kill")):
                    self._write("cgroup.kill", 1)
                else:
                    with open(os.path.join(self.path, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            with contextlib.suppress(OSError):
                                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.01)


def _systemd_env() -> dict[str, str]:
    """What `systemd-run --user` needs to find the user's manager (the bus address; no secrets)."""
    env = dict(SANDBOX_ENV)
    if os.geteuid() != 0:
        for key in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):
            if os.environ.get(key):
                env[key] = os.environ[key]
    return env


def _systemd_argv(limits: _Limits) -> list[str]:
    """systemd-run making a scope with the run's budget, then (env -i) the launcher with the minimal environment."""
    argv = [shutil.which("systemd-run") or "systemd-run"] + (["--user"] if os.geteuid() != 0 else [])
    argv += ["--scope", "--quiet", "--collect", "-p", f"MemoryMax={limits.memory_bytes}", "-p", "MemorySwapMax=0"]
    argv += ["-p", f"TasksMax={limits.allowance + LAUNCHER_TASKS}", "--", shutil.which("env") or "/usr/bin/env", "-i"]
    return argv + [f"{k}={v}" for k, v in SANDBOX_ENV.items()]


def _systemd_problem() -> str | None:
    """None when systemd-run makes scopes whose memory limit really applies, else why not."""
    if not os.path.isdir("/run/systemd/system"):
        return "systemd is not running"
    if shutil.which("systemd-run") is None:
        return "systemd-run is not installed"
    want = 64 << 20
    limits = _Limits(10, want, MAX_FILE_BYTES, 8, MAX_OPEN_FILES, want, allowance=8)
    # inside the scope: read our own cgroup's memory.max (on a cgroup v1 system this fails, as it should)
    check = "p = open('/proc/self/cgroup').read().split('0::', 1)[1].split()[0]\nprint(open('/sys/fs/cgroup' + p + '/memory.max').read().strip())"
    try:
        done = subprocess.run(_systemd_argv(limits) + [_python_executable(), "-I", "-S", "-c", check], capture_output=True,
                              text=True, timeout=30, env=_systemd_env(), stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemd-run failed ({e})"
    if done.returncode != 0 or done.stdout.strip() != str(want):
        lines = done.stderr.strip().splitlines()
        return f"systemd-run cannot make a memory-limited scope ({lines[-1] if lines else f'exit code {done.returncode}'})"
    return None


def _killed_from_outside(returncode: int, timed_out: bool, flooded: str | None) -> bool:
    """In a systemd scope: the launcher died of SIGKILL or SIGTERM that we did not send (the scope's OOM handling).

    The sandboxed code cannot signal the launcher (another pid namespace), so only the memory limit does this.
    """
    return not timed_out and not flooded and returncode in (-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------
# seccomp: a classic-BPF filter bwrap installs before the bootstrap starts

# system calls that no sandboxed program needs and that are the usual ways into kernel bugs or out of a sandbox
_DENIED = ["keyctl", "add_key", "request_key", "bpf", "userfaultfd", "perf_event_open", "kexec_load",
           "kexec_file_load", "init_module", "finit_module", "delete_module", "io_uring_setup", "io_uring_enter",
           "io_uring_register", "ptrace", "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "setns",
           "open_by_handle_at", "name_to_handle_at", "acct", "quotactl", "syslog", "open_tree", "move_mount",
           "fsopen", "fsconfig", "fsmount", "fspick"]  # fmt: skip
_SYSCALLS = {  # from the kernel's unistd headers
    "x86_64": (0xC000003E, dict(keyctl=250, add_key=248, request_key=249, bpf=321, userfaultfd=323,
        perf_event_open=298, kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313,
        delete_module=176, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, ptrace=101, mount=165,
        umount2=166, pivot_root=155, swapon=167, swapoff=168, reboot=169, setns=308, open_by_handle_at=304,
        name_to_handle_at=303, acct=163, quotactl=179, syslog=103, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, unshare=272, clone=56, clone3=435)),
    "aarch64": (0xC00000B7, dict(keyctl=219, add_key=217, request_key=218, bpf=280, userfaultfd=282,
        perf_event_open=241, kexec_load=104, kexec_file_load=294, init_module=105, finit_module=273,
        delete_module=106, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, ptrace=117, mount=40,
        umount2=39, pivot_root=41, swapon=224, swapoff=225, reboot=142, setns=268, open_by_handle_at=265,
        name_to_handle_at=264, acct=89, quotactl=60, syslog=116, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, unshare=97, clone=220, clone3=435)),
}  # fmt: skip
_CLONE_NEWUSER = 0x10000000


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter for this CPU (None where we have no syscall table: then the sandbox runs without one).

    Denies (EPERM) the calls in `_DENIED`, new user namespaces through clone/unshare, and clone3 (ENOSYS, whose
    flags a filter cannot read; libc falls back to clone); kills a process that switches to another syscall ABI
    (32-bit int 0x80 on x86_64); on x86_64 refuses the x32 ABI's numbers.
    """
    import platform
    import struct

    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return None
    audit_arch, nr = _SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]  # arch check, then nr
    if machine == "x86_64":
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, enosys)]
    for name in _DENIED:
        prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, enosys)]
    for name in ("clone", "unshare"):  # flags are the first argument: its low 32 bits at offset 16
        prog += [(jeq, 0, 4, nr[name]), (ld, 0, 0, 16), (jset, 0, 1, _CLONE_NEWUSER), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)


# ---------------------------------------------------------------------------------------------------------
# bubblewrap availability (probed once per process)

_probe_lock = threading.Lock()
_probe_result: list[str | None] = []


def bwrap_problem() -> str | None:
    """None when bubblewrap can run a sandbox here, else a short reason. Probed once per process."""
    with _probe_lock:
        if not _probe_result:
            _probe_result.append(_probe())
        return _probe_result[0]


def _probe() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if not _bwrap_supports("--size") or not _bwrap_supports("--ro-bind-data"):
        return "this bubblewrap is too old (needs --size and --ro-bind-data, bubblewrap >= 0.5)"
    uid = _run_uid()
    stdin_read, stdin_write = os.pipe()
    os.close(stdin_write)  # empty stdin
    try:
        proc, sandbox_init = _spawn_bwrap(_python_executable(), b"print('ok')\n", uid, _limits(uid, 10, 512), stdin_read, None, [])
    except OSError as e:
        return f"bubblewrap failed to start ({e})"
    finally:
        os.close(stdin_read)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return "bubblewrap did not finish a trivial program in 30 s"
    finally:
        _kill_everything(proc, uid, secure=True, sandbox_init=sandbox_init)
    if proc.returncode != 0 or out != b"ok\n":
        lines = err.decode("utf-8", "replace").strip().splitlines()
        return f"bubblewrap cannot create a sandbox here ({lines[-1] if lines else f'exit code {proc.returncode}'})"
    return None


_help_text: list[str] = []


def _bwrap_supports(flag: str) -> bool:
    if not _help_text:
        try:
            # by absolute path: with env= given, a bare name would be looked up in SANDBOX_ENV's PATH, not ours
            bwrap = shutil.which("bwrap") or "bwrap"
            done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env=dict(SANDBOX_ENV))
            _help_text.append(done.stdout + done.stderr)
        except (OSError, subprocess.TimeoutExpired):
            _help_text.append("")
    return flag in _help_text[0]


_warned: list[bool] = []


def _warn_insecure_once(problem: str) -> None:
    if not _warned:
        _warned.append(True)
        from nanochat.common.logging import warn0

        warn0(f"running untrusted code WITHOUT a sandbox ({problem}): rlimits and a timeout only; "
              "install bubblewrap (apt-get install bubblewrap) to contain it")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# collecting output, stopping, reporting


def _collect(
    proc: subprocess.Popen, timeout: float, cap: int, stdin_fd: int, stdin: bytes
) -> tuple[bytes, bytes, bool, str | None]:
    """Feed `stdin` into the pipe `stdin_fd` (closed here) and read both output pipes until EOF or the deadline;
    stop the run when a stream passes `cap` bytes.

    Returns (stdout, stderr, timed_out, name of the stream that flooded or None). Each buffer holds at most
    cap + one read.
    """
    deadline = time.monotonic() + timeout
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    timed_out, flooded = False, None
    exit_seen = None
    written = 0
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if stdin:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            os.close(stdin_fd)
            stdin_fd = -1
        try:
            while set(sel.get_map()) - {stdin_fd}:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if proc.poll() is not None:
                    # Something outside the process group may still hold the pipes (only possible in insecure mode):
                    # give it a moment to drain, then stop waiting.
                    exit_seen = exit_seen or now
                    if now - exit_seen > 0.2:
                        break
                for key, _ in sel.select(timeout=min(0.05, deadline - now)):
                    if key.fd == stdin_fd:
                        try:
                            written += os.write(stdin_fd, stdin[written : written + 65536])
                        except BlockingIOError:
                            continue
                        except OSError:  # the program closed its stdin (EPIPE): it wants no more
                            written = len(stdin)
                        if written >= len(stdin):
                            sel.unregister(stdin_fd)
                            os.close(stdin_fd)
                            stdin_fd = -1
                        continue
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = buffers[key.fd]
                    buf += chunk
                    if len(buf) > cap:
                        del buf[cap:]
                        flooded = names[key.fd]
                        break
                if flooded:
                    break
        finally:
            if stdin_fd >= 0:
                os.close(stdin_fd)
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), timed_out, flooded


def _kill_everything(proc: subprocess.Popen, uid: int, secure: bool, sandbox_init: tuple[int, str] | None = None) -> None:
    """Kill the launcher's process group and reap it; then wait until the sandbox's pid 1 is gone (secure
    mode), or kill every process left with the run's uid (insecure mode, as root)."""
    # Once the launcher is reaped its pid may be reused, so its group is signalled only while it is ours: the
    # launcher is still there, or (insecure mode) children of the group keep the id alive. In secure mode the
    # sandbox's processes are in a session of their own and die with bwrap.
    if proc.returncode is None or not secure:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if sandbox_init is not None:
        # bwrap's death sends SIGKILL to the sandbox's pid 1 (--die-with-parent), whose exit first kills and
        # reaps every other process of its pid namespace: once it is a zombie or gone, nothing of the run is left.
        pid, start = sandbox_init
        deadline = time.monotonic() + 10
        while _start_time(pid) == start and time.monotonic() < deadline:
            time.sleep(0.002)
    if uid >= 0 and not secure:
        # kill(-1) from the run's uid reaches exactly the processes of that uid: escapees of the process group.
        # (In secure mode there are none: the sandbox's pid namespace is gone with bwrap, see the tests.)
        killer = shutil.which("kill")
        argv = [killer, "-9", "-1"] if killer else [_python_executable(), "-S", "-c", "import os; os.kill(-1, 9)"]
        for _ in range(2):
            subprocess.run(argv, user=uid, group=uid, extra_groups=[], env=dict(SANDBOX_ENV), cwd="/",
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for stream in (proc.stdout, proc.stderr):
        stream.close()


def _result(
    returncode: int,
    out: bytes,
    err: bytes,
    timed_out: bool,
    flooded: str | None,
    timeout: float,
    memory_mb: int,
    cap: int,
    limits: _Limits,
    oom_killed: bool = False,
) -> ExecutionResult:
    """`oom_killed`: the run's cgroup says its memory limit killed a process."""
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if flooded == "stdout":
        stdout += f"\n[output truncated at {cap} bytes]"
    elif flooded == "stderr":
        stderr += f"\n[output truncated at {cap} bytes]"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last_line = lines[-1] if lines else ""
    # A child killed by signal N: bwrap exits with 128 + N, a bare interpreter (insecure mode) reports -N.
    # (So in secure mode a program's own sys.exit(137) also reads as SIGKILL: exit codes above 128 are theirs.)
    signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 128 + 65 else 0)
    cpu_killed = signum == signal.SIGXCPU and not flooded and not timed_out
    timed_out = timed_out or cpu_killed
    # The budget is for the whole run: a MemoryError in any of its processes (a forked child's traceback
    # counts, even when the parent goes on and exits 0) is the run exceeding it.
    memory_line = next((line for line in lines if line.startswith("MemoryError")), None)
    if memory_line is None and "Cannot allocate memory" in last_line:
        memory_line = last_line
    memory_exceeded = oom_killed or memory_line is not None
    if timed_out:
        error = f"timed out after {timeout:g} s" if not cpu_killed else f"CPU time limit of {limits.cpu_seconds} s exceeded"
        exit_code = None
    elif flooded:
        error = f"output limit exceeded: more than {cap} bytes on {flooded}; the program was stopped"
        exit_code = None
    else:
        exit_code = -signum if signum else returncode
        if memory_exceeded:
            why = "the run's processes together went over it and were killed" if oom_killed else memory_line
            error = f"memory limit of {memory_mb} MiB exceeded ({why})"
        elif returncode == 0:
            error = None
        elif signum == signal.SIGXFSZ:
            error = f"file size limit of {limits.file_bytes} bytes exceeded"
        elif signum:
            error = f"killed by signal {_signal_name(signum)}"
        elif last_line:
            error = last_line
        else:
            error = f"exit code {returncode}"
    success = exit_code == 0 and not timed_out and not flooded and not memory_exceeded
    return ExecutionResult(success, stdout, stderr, error, timed_out, memory_exceeded, exit_code, flooded is not None)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
