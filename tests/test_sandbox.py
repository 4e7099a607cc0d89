"""The code sandbox: what a HumanEval run needs (pass, fail with the assertion, stdout, stdin, exit code),
and escape attempts, each checking from the outside that nothing changed: no file appeared, no secret
leaked, no connection arrived, no process survived, no host process was touched."""

from __future__ import annotations

import ast
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nanochat.common.errors import NanochatError
from nanochat.common import sandbox
from nanochat.common.sandbox import ExecutionResult, run_python

# Skipped where bubblewrap cannot run, unless NANOCHAT_REQUIRE_SANDBOX=1 (CI sets it: there a skip would hide a
# machine that runs untrusted code unsandboxed).
needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_problem() is not None and os.environ.get("NANOCHAT_REQUIRE_SANDBOX") != "1",
    reason=f"no usable bubblewrap: {sandbox.bwrap_problem()}",
)


# The escape attempts run with a larger budget than run_python's default: where no cgroup can be made the
# budget is split into per-process shares, and 1024 MiB leaves room for the shells and grandchildren they start.
ESCAPE_MEMORY_MB = 1024


def run(code: str, **kw) -> ExecutionResult:
    kw.setdefault("memory_mb", ESCAPE_MEMORY_MB)
    return run_python(textwrap.dedent(code), **kw)


@pytest.fixture
def marker() -> str:
    """A unique name; escape attempts try to create it in places the test then checks."""
    return f"nanochat-escape-{secrets.token_hex(6)}"


def _process_limit() -> int:
    """RLIMIT_NPROC in the escape attempts' sandbox: the allowance (plus, when not root, bwrap's pid 1 or the
    caller's own tasks)."""
    shared = sandbox.memory_containment().kind != "rlimit"
    return sandbox._limits(sandbox._run_uid(), 1, ESCAPE_MEMORY_MB, shared=shared).nproc


def host_processes_matching(needle: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


# ----------------------------------------------------------------------------------------------------------
# what a HumanEval-style caller needs

HUMANEVAL_PROMPT = '''
def add_elements(arr, k):
    """Sum of the elements with at most two digits among the first k elements of arr."""
'''
HUMANEVAL_TEST = """
def check(candidate):
    assert candidate([111, 21, 3, 4000, 5, 6, 7, 8, 9], 4) == 24
    assert candidate([1, -2, -3, 41, 57, 76, 87, 88, 99], 3) == -4
    assert candidate([11, 21, 3, 90, 5, 6, 7, 8, 9], 4) == 125, "sum of the first four"
check(add_elements)
"""


@needs_bwrap
def test_correct_solution_passes():
    body = "    return sum(x for x in arr[:k] if len(str(abs(x))) <= 2)\n"
    res = run_python(HUMANEVAL_PROMPT + body + HUMANEVAL_TEST)
    assert res.success and res.exit_code == 0 and res.error is None
    assert not res.timed_out and not res.memory_exceeded and not res.output_truncated


@needs_bwrap
def test_wrong_solution_fails_with_the_assertion():
    body = "    return sum(arr[:k])\n"  # forgets the two-digit rule
    res = run_python(HUMANEVAL_PROMPT + body + HUMANEVAL_TEST)
    assert not res.success and res.exit_code == 1
    assert res.error == "AssertionError"
    assert 'File "/code/main.py"' in res.stderr and "assert candidate([111, 21" in res.stderr


@needs_bwrap
def test_assertion_message_is_in_error():
    res = run("assert 1 + 1 == 3, 'arithmetic is broken'")
    assert res.error == "AssertionError: arithmetic is broken"


@needs_bwrap
def test_stdout_stderr_stdin_and_exit_code():
    res = run(
        """
        import sys
        data = sys.stdin.read()
        print("got", data.upper(), "é✓")
        print("warn", file=sys.stderr)
        sys.exit(3)
        """,
        stdin="hello\n",
    )
    assert res.stdout == "got HELLO\n é✓\n"
    assert res.stderr == "warn\n"
    assert res.exit_code == 3 and not res.success and res.error == "warn"


@needs_bwrap
def test_runs_as_main_with_standard_library_only():
    res = run(
        """
        import collections, itertools, json, math, re
        assert __name__ == "__main__"
        print(math.comb(10, 3), json.dumps(sorted(collections.Counter("abca").items())))
        try:
            import hypothesis  # installed on the host, not in the sandbox
        except ImportError:
            print("no site-packages")
        """
    )
    assert res.success, res.stderr
    assert res.stdout == '120 [["a", 2], ["b", 1], ["c", 1]]\nno site-packages\n'


@needs_bwrap
def test_syntax_error_and_empty_stdin():
    res = run("def f(:\n    pass")
    assert not res.success and res.error.startswith("SyntaxError")
    res = run("import sys; print(repr(sys.stdin.read()))")
    assert res.stdout == "''\n"


@needs_bwrap
def test_work_dir_is_writable_and_private_and_gone_afterwards():
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("nanochat-sandbox-")}
    res = run(
        """
        import os
        print(os.getcwd(), os.listdir("."))
        open("notes.txt", "w").write("hello")
        print(open("notes.txt").read(), os.listdir("/tmp"))
        """
    )
    assert res.stdout == "/sandbox []\nhello []\n"
    res = run("import os; print(os.listdir('.'))")  # a fresh one each run
    assert res.stdout == "[]\n"
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("nanochat-sandbox-")}
    assert after <= before


@needs_bwrap
def test_concurrent_runs_from_threads():
    outputs = {}

    def work(i):
        outputs[i] = run_python(f"print({i} * {i})").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == {i: f"{i * i}\n" for i in range(6)}


def test_bad_arguments_are_user_errors():
    with pytest.raises(NanochatError, match="timeout"):
        run_python("pass", timeout=0)
    with pytest.raises(NanochatError, match="timeout"):
        run_python("pass", timeout=float("nan"))
    with pytest.raises(NanochatError, match="memory_mb"):
        run_python("pass", memory_mb=1)
    with pytest.raises(NanochatError, match="str"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(NanochatError, match="limited"):
        run_python("#" * (sandbox.MAX_INPUT_BYTES + 1))


def test_without_bubblewrap_it_refuses(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(NanochatError, match=r"apt-get install bubblewrap"):
        run_python("print(1)")


def test_probe_reports_missing_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert "not installed" in sandbox._probe()


# ----------------------------------------------------------------------------------------------------------
# escape attempts: shells and processes


@needs_bwrap
@pytest.mark.parametrize(
    "how",
    [
        "os.system('{sh}')",
        "subprocess.run(['sh', '-c', '{sh}'])",
        "subprocess.Popen('{sh}', shell=True).wait()",
        "ctypes.CDLL(None).system(b'{sh}')",
        "os.execv('/bin/sh', ['sh', '-c', '{sh}'])",
        "pty.spawn(['sh', '-c', '{sh}'])",
    ],
    ids=["os.system", "subprocess.run", "popen-shell", "ctypes-libc-system", "execv", "pty.spawn"],
)
def test_shell_cannot_touch_the_host(how, marker, tmp_path):
    shell = f"touch /tmp/{marker} {tmp_path}/{marker}; ls /tmp"  # the shell runs; its /tmp is the sandbox's
    res = run("import os, subprocess, ctypes, pty\n" + how.format(sh=shell))
    assert marker in res.stdout, (res.stdout, res.stderr)
    assert not (Path("/tmp") / marker).exists()
    assert not (tmp_path / marker).exists()


@needs_bwrap
def test_shell_runs_but_sees_only_the_sandbox(tmp_path):
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    res = run(f"import os; os.system('ls /; cat {tmp_path}/secret.txt; echo done')")
    assert "done" in res.stdout and "TOPSECRET" not in res.stdout + res.stderr
    assert "work" not in res.stdout.split()  # the host's /work is not there


# ----------------------------------------------------------------------------------------------------------
# escape attempts: secrets


@needs_bwrap
def test_secret_env_var_does_not_leak(monkeypatch):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("NANOCHAT_SECRET", secret)
    res = run(
        """
        import os, glob
        print(dict(os.environ))
        for path in glob.glob("/proc/*/environ"):
            try:
                print(path, open(path, "rb").read())
            except OSError as e:
                print(path, e)
        os.system("env; cat /proc/1/environ")
        """
    )
    assert res.success, res.stderr
    assert secret not in res.stdout + res.stderr
    assert "NANOCHAT_SECRET" not in res.stdout + res.stderr
    assert "'HOME': '/tmp'" in res.stdout  # what it does see: the minimal environment


@needs_bwrap
def test_cannot_read_the_callers_files(tmp_path):
    secret = "TOPSECRET-" + secrets.token_hex(6)
    (tmp_path / "key.txt").write_text(secret)
    res = run(
        f"""
        import os
        for path in [{str(tmp_path / "key.txt")!r}, {__file__!r}, "/etc/passwd", "/etc/shadow", "/work", "/sys/class"]:
            try:
                print(path, open(path).read()[:100] if os.path.isfile(path) else os.listdir(path))
            except OSError as e:
                print(path, type(e).__name__)
        """
    )
    assert secret not in res.stdout
    assert res.stdout.count("FileNotFoundError") == 6, res.stdout


@needs_bwrap
def test_home_directory_is_not_visible():
    home = Path.home()
    res = run(f"import os\ntry:\n    print(sorted(os.listdir({str(home)!r})))\nexcept OSError as e:\n    print([])")
    seen = set(ast.literal_eval(res.stdout))
    # only the path down to the interpreter, if it lives under the home directory (pyenv does), is there
    base = Path(sys.base_prefix)
    allowed = {base.relative_to(home).parts[0]} if base.is_relative_to(home) and base != home else set()
    assert seen <= allowed, seen


@needs_bwrap
def test_symlinks_lead_nowhere(tmp_path):
    secret = "LINKSECRET-" + secrets.token_hex(6)
    (tmp_path / "s.txt").write_text(secret)
    res = run(
        f"""
        import os
        os.symlink({str(tmp_path / "s.txt")!r}, "a"); os.symlink("/proc/1/root/etc/hostname", "b")
        os.symlink("/proc/self/root/../../..", "c")
        for name in "abc":
            try:
                print(name, open(name).read() if name != "c" else os.listdir(name))
            except OSError as e:
                print(name, type(e).__name__)
        """
    )
    assert secret not in res.stdout
    assert "a FileNotFoundError" in res.stdout and "work" not in res.stdout


@needs_bwrap
def test_proc_shows_no_host_process():
    res = run(
        """
        import os
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(pid, open(f"/proc/{pid}/cmdline", "rb").read()[:60])
                except OSError:
                    pass
        """
    )
    assert res.success
    assert "pytest" not in res.stdout
    assert len([line for line in res.stdout.splitlines() if line]) <= 3  # bwrap's pid 1, the program (and a helper)


# ----------------------------------------------------------------------------------------------------------
# escape attempts: writing outside


@needs_bwrap
def test_writes_outside_the_work_dir_fail(marker, tmp_path):
    res = run(
        f"""
        import os
        for path in ["/usr/{marker}", "/{marker}", "/dev/{marker}", "/code/{marker}", {str(tmp_path / marker)!r}, "/code/main.py", "/proc/sys/kernel/hostname"]:
            try:
                with open(path, "w") as f:
                    f.write("x")
                print(path, "written")
            except OSError as e:
                print(path, type(e).__name__)
        for private in ["/tmp/{marker}", "/dev/shm/{marker}"]:
            with open(private, "w") as f:
                f.write("only in the sandbox's own tmpfs")
        """
    )
    assert res.success and res.stdout.count("\n") == 7 and "written" not in res.stdout, res.stdout
    for host_path in [Path("/usr") / marker, Path("/") / marker, tmp_path / marker, Path("/tmp") / marker, Path("/dev/shm") / marker]:
        assert not host_path.exists()


@needs_bwrap
def test_huge_file_is_stopped_by_the_file_size_limit():
    res = run("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * (1 << 20))")
    assert not res.success and "File too large" in res.error


@needs_bwrap
def test_filling_tmp_is_bounded():
    res = run(
        """
        import os
        n = 0
        try:
            while True:
                with open(f"/tmp/f{n}", "wb") as f:
                    f.write(b"x" * (8 << 20))
                n += 1
        except OSError as e:
            print(n, e.errno)
        """
    )
    written, errno = res.stdout.split()
    assert int(written) <= 8 and errno == "28"  # ENOSPC from the 64 MiB tmpfs, long before the host's memory


@needs_bwrap
def test_mount_and_setuid_fail():
    res = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("mount", libc.mount(b"none", b"/usr", b"tmpfs", 0, None), ctypes.get_errno())
        print("uid", os.getuid() != 0)
        try:
            os.setuid(0)
            print("setuid worked")
        except OSError:  # EPERM, or EINVAL in a user namespace where uid 0 is not mapped
            print("setuid refused")
        print("chroot", libc.chroot(b"/tmp"))
        """
    )
    assert "mount -1" in res.stdout and "uid True" in res.stdout and "setuid refused" in res.stdout
    assert "chroot -1" in res.stdout


# ----------------------------------------------------------------------------------------------------------
# escape attempts: network


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.3)
    yield srv
    srv.close()


def _no_connection(srv) -> bool:
    try:
        conn, _ = srv.accept()
    except (socket.timeout, BlockingIOError):
        return True
    conn.close()
    return False


@needs_bwrap
def test_cannot_connect_to_a_host_listener(listener):
    port = listener.getsockname()[1]
    res = run(
        f"""
        import socket
        for host in ["127.0.0.1", "localhost", "::1", "0.0.0.0"]:
            try:
                socket.create_connection((host, {port}), timeout=1).sendall(b"hi")
                print(host, "connected")
            except OSError as e:
                print(host, type(e).__name__)
        """
    )
    assert res.stdout.count("\n") == 4 and "connected" not in res.stdout
    assert _no_connection(listener)


@needs_bwrap
def test_cannot_send_udp_to_the_host():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.3)
    port = udp.getsockname()[1]
    res = run(f"import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('127.0.0.1', {port}))\nexcept OSError: pass\nprint('sent')")
    assert res.stdout == "sent\n"  # into the sandbox's own loopback, where nobody listens
    with pytest.raises(socket.timeout):
        udp.recvfrom(16)
    udp.close()


@needs_bwrap
def test_cannot_reach_a_host_abstract_unix_socket():
    name = b"\0nanochat-test-" + secrets.token_hex(6).encode()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(1)
    srv.settimeout(0.3)
    res = run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({name!r}); print('connected')\nexcept OSError as e:\n    print(type(e).__name__)")
    assert res.stdout.strip() in ("ConnectionRefusedError", "FileNotFoundError"), res.stdout
    assert _no_connection(srv)
    srv.close()


@needs_bwrap
def test_no_dns_and_no_interfaces_but_loopback():
    res = run(
        """
        import socket
        try:
            print(socket.getaddrinfo("example.com", 80))
        except OSError as e:
            print("dns", type(e).__name__)
        print(sorted(name for _, name in socket.if_nameindex()))
        """
    )
    assert "dns gaierror" in res.stdout
    assert "['lo']" in res.stdout


# ----------------------------------------------------------------------------------------------------------
# escape attempts: processes that outlive, hog or attack


@needs_bwrap
def test_grandchild_does_not_outlive_the_timeout():
    tag = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"  # unique sleep argument
    t0 = time.monotonic()
    res = run(
        f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "{tag}"])
            os._exit(0)
        time.sleep(100)
        """,
        timeout=1,
    )
    assert res.timed_out and time.monotonic() - t0 < 5
    assert host_processes_matching(tag) == []


@needs_bwrap
def test_grandchild_does_not_outlive_a_normal_exit():
    tag = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"
    res = run(
        f"""
        import os, signal, subprocess
        subprocess.Popen(["setsid", "sh", "-c", "trap '' TERM HUP; exec sleep {tag}"], start_new_session=True)
        print("left it running")
        """
    )
    assert res.success and res.stdout == "left it running\n"
    assert host_processes_matching(tag) == []


@needs_bwrap
def test_fork_bomb_is_contained():
    canary = subprocess.Popen(["sleep", "60"])
    try:
        t0 = time.monotonic()
        res = run(
            """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """,
            timeout=2,
        )
        assert res.timed_out and time.monotonic() - t0 < 8
        assert canary.poll() is None  # the host is fine
        probe = run_python("print('still works')")
        assert probe.stdout == "still works\n"
    finally:
        canary.kill()
        canary.wait()


@needs_bwrap
def test_process_limit_applies():
    res = run(
        """
        import os, time
        n = 0
        try:
            for _ in range(500):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as e:
            print(n, type(e).__name__)
        """,
        timeout=3,
    )
    count, name = res.stdout.split()
    assert int(count) < _process_limit() and name == "BlockingIOError"


@needs_bwrap
def test_thread_bomb_is_contained():
    res = run(
        """
        import threading, time
        n = 0
        try:
            for _ in range(10000):
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
                n += 1
        except RuntimeError as e:
            print(n, e)
        """,
        timeout=3,
    )
    count = int(res.stdout.split()[0])
    assert count < _process_limit()


@needs_bwrap
def test_killing_the_parent_or_everything_hurts_nothing():
    canary = subprocess.Popen(["sleep", "60"])
    try:
        res = run(
            f"""
            import os, signal
            for target in [os.getppid(), 1, {os.getpid()}, {canary.pid}, -1]:
                try:
                    os.kill(target, signal.SIGKILL)
                    print(target, "sent")
                except OSError as e:
                    print(target, type(e).__name__)
            print("done")
            """
        )
        assert canary.poll() is None
        assert f"{canary.pid} ProcessLookupError" in res.stdout or f"{canary.pid} PermissionError" in res.stdout
    finally:
        canary.kill()
        canary.wait()


@needs_bwrap
def test_sigterm_ignoring_spinner_is_killed():
    t0 = time.monotonic()
    res = run(
        """
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
        """,
        timeout=1,
    )
    assert res.timed_out and res.error == "timed out after 1 s" and res.exit_code is None
    assert time.monotonic() - t0 < 4


@needs_bwrap
def test_memory_bomb_is_reported():
    res = run("x = []\nwhile True:\n    x.append(bytearray(10 << 20))", memory_mb=128)
    assert res.memory_exceeded and not res.success and "memory limit of 128 MiB" in res.error


@needs_bwrap
def test_mmap_bomb_is_refused():
    res = run("import mmap\nm = mmap.mmap(-1, 4 << 30)\nprint('mapped')")
    assert not res.success and "mapped" not in res.stdout and res.memory_exceeded


def _mem_available() -> int:
    """The host's MemAvailable in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


FORKING_HOG = """
import os, time
kids = []
for _ in range(32):
    try:
        pid = os.fork()
    except OSError:  # past the process limit: keep trying, as an attacker would
        continue
    if pid == 0:
        block = b"\\x01" * (200 << 20)  # 200 MiB, every page written
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print(len(kids), "children")
"""


# the same attacker, adapted to whatever per-process limit it meets: every process takes all it can and holds it
GREEDY_FORKING_HOG = """
import os, time
def grab():
    held = []
    try:
        while True:
            held.append(b"\\x01" * (1 << 20))
    except MemoryError:
        return held
kids = []
for _ in range(32):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        held = grab()
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
held = grab()
for pid in kids:
    os.waitpid(pid, 0)
print(len(kids), "children")
"""


def _run_resident_bytes() -> int | None:
    """Resident anonymous + shared memory of the sandbox's processes (as root: those of the throwaway uids a run
    gets, 2**30 and up); None when not root (the run's processes then have our uid)."""
    if os.geteuid() != 0:
        return None
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if not (1 << 30) <= os.stat(f"/proc/{pid}").st_uid < (1 << 31):
                continue
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
            total += sum(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem") if k in fields)
        except (OSError, ValueError):
            continue
    return total


def _measure_run(code: str, **kw) -> tuple[int, int | None, ExecutionResult]:
    """Run `code`, sampling every 5 ms: (how far the host's MemAvailable fell below its value at the start, the
    peak resident memory of the run's own processes or None, the result)."""
    drops, resident, done = [], [], threading.Event()
    before = _mem_available()

    def sample():
        while not done.is_set():
            drops.append(before - _mem_available())
            own = _run_resident_bytes()
            if own is not None:
                resident.append(own)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        res = run_python(code, **kw)
    finally:
        done.set()
        sampler.join()
    return max(drops + [0]), (max(resident + [0]) if os.geteuid() == 0 else None), res


@needs_bwrap
@pytest.mark.parametrize("code", [FORKING_HOG, GREEDY_FORKING_HOG], ids=["200-MiB-each", "all-they-can"])
def test_forked_children_share_one_memory_budget(code):
    # 32 children touching 200 MiB each under memory_mb=256: without one budget for the whole run this took
    # 5.4 GB of the host. Two measures, both sampled during the run: the resident memory of the run's own
    # processes (exact, as root), and the drop of the host's MemAvailable. The latter also moves with every
    # other program on the machine (by hundreds of MB on a shared one), so a drop over the bound is measured
    # again, up to five times, before it counts.
    bound = 300e6
    drops = []
    for _ in range(5):
        drop, resident, res = _measure_run(code, memory_mb=256, timeout=20)
        drops.append(drop)
        if code is FORKING_HOG or sandbox.memory_containment().kind != "rlimit":
            # a child's MemoryError (rlimits) or the cgroup's out-of-memory kill: the run is reported as over budget
            assert res.memory_exceeded and not res.success and "memory limit of 256 MiB exceeded" in res.error, res
        assert resident is None or resident <= 256 << 20, f"the run's processes held {resident / 1e6:.0f} MB"
        if drop <= bound:
            break
    shown = f"{resident / 1e6:.0f} MB resident" if resident is not None else "resident not measured (not root)"
    print(f"[{sandbox.memory_containment().kind}] {res.stdout.strip()}; {shown}; MemAvailable drop {[round(d / 1e6) for d in drops]} MB")
    assert min(drops) <= bound, f"host MemAvailable dropped by {[round(d / 1e6) for d in drops]} MB"


@needs_bwrap
def test_the_budget_still_fits_an_ordinary_program():
    # the split (where no cgroup can be made) must leave a single process of a HumanEval-sized run room to work
    res = run_python("x = bytearray(24 << 20)\ny = list(range(10 ** 6))\nprint(len(x) + len(y))", memory_mb=256)
    assert res.success and res.stdout == f"{(24 << 20) + 10 ** 6}\n", res


@pytest.mark.parametrize("memory_mb", [64, 100, 128, 256, 300, 512, 1000, 1024, 4096, 1 << 20])
def test_split_budget_never_adds_up_to_more_than_memory_mb(memory_mb):
    # without a cgroup: every process at its address-space limit, plus every tmpfs full, fits the budget
    lim = sandbox._limits(0, 5, memory_mb, shared=False)
    total = lim.allowance * lim.address_space + lim.tmp_bytes + lim.work_bytes + lim.shm_bytes
    assert total <= memory_mb * 1024 * 1024
    assert lim.nproc == lim.allowance >= 1 and lim.address_space >= 40 << 20  # still room for an interpreter
    # with a cgroup, the cgroup holds the total: each process may use all of it, and 32 processes may run
    shared = sandbox._limits(0, 5, memory_mb, shared=True)
    assert shared.memory_bytes == memory_mb << 20 and shared.address_space == memory_mb << 20 and shared.nproc == 32


@needs_bwrap
def test_stdin_is_a_read_only_pipe():
    res = run(
        """
        import os, stat, sys
        print(stat.S_ISFIFO(os.fstat(0).st_mode), sys.stdin.read())
        try:
            os.write(0, b"overwrite the host's file")
            print("wrote")
        except OSError as e:
            print("refused", e.errno)
        """,
        stdin="the input",
    )
    assert res.success and res.stdout == "True the input\nrefused 9\n", res  # EBADF: a read end


@needs_bwrap
def test_large_stdin_arrives_whole_and_an_unread_one_does_not_hang():
    data = "".join(f"{i}\n" for i in range(400_000))  # ~2.6 MB: many times a pipe's buffer
    res = run("import sys, hashlib\nprint(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())", stdin=data)
    import hashlib

    assert res.success and res.stdout.strip() == hashlib.sha256(data.encode()).hexdigest()
    t0 = time.monotonic()
    res = run("print('ignored my input')", stdin=data, timeout=10)
    assert res.success and res.stdout == "ignored my input\n" and time.monotonic() - t0 < 8


# the cgroup v2 path, checked against a stand-in cgroup folder (this kind of machine may have no delegated
# cgroup v2 with the memory controller; the kernel side is then exercised wherever one exists)


def test_own_cgroup_folder_is_found_from_proc(tmp_path):
    (tmp_path / "cgroup").write_text("12:pids:/x\n0::/user.slice/user-1000.slice/app.scope\n")
    (tmp_path / "mountinfo").write_text(
        "24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw\n"
        "31 24 0:27 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    found = sandbox._own_cgroup_dir(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo"))
    assert found == "/sys/fs/cgroup/user.slice/user-1000.slice/app.scope"
    (tmp_path / "mountinfo").write_text("31 24 0:27 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")  # no cgroup2 mounted
    assert sandbox._own_cgroup_dir(str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")) is None


def test_a_folder_without_the_controllers_is_not_used(tmp_path):
    assert "not a cgroup v2 folder" in sandbox._cgroup_parent_problem(str(tmp_path))
    (tmp_path / "cgroup.subtree_control").write_text("cpu pids\n")
    assert "memory controller" in sandbox._cgroup_parent_problem(str(tmp_path))


def test_a_wrong_cgroup_setting_is_an_error_not_a_silent_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv(sandbox.CGROUP_ENV, str(tmp_path))
    monkeypatch.setattr(sandbox, "_containment", [])
    with pytest.raises(NanochatError, match=f"{sandbox.CGROUP_ENV}=.*unset {sandbox.CGROUP_ENV}"):
        sandbox.memory_containment()
    monkeypatch.setattr(sandbox, "_containment", [])  # probe again for the tests that follow


def test_run_cgroup_gets_the_whole_budget_and_joins_before_the_launcher_runs(tmp_path):
    lim = sandbox._limits(0, 5, 256, shared=True)
    group = sandbox._CgroupRun(str(tmp_path), lim)
    folder = Path(group.path)
    assert folder.parent == tmp_path
    assert (folder / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (folder / "pids.max").read_text() == str(32 + sandbox.LAUNCHER_TASKS)
    assert not group.oom_killed()
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert group.oom_killed()
    # the launcher prefix moves the very process that then runs the command into the cgroup
    argv = group.launcher(sys.executable) + [sys.executable, "-c", "import os; print(os.getpid())"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and (folder / "cgroup.procs").read_text() == done.stdout.strip()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@needs_bwrap
def test_output_flood_is_capped_and_quick(stream):
    t0 = time.monotonic()
    res = run(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 4096)", timeout=20)
    elapsed = time.monotonic() - t0
    text = getattr(res, stream)
    assert res.output_truncated and not res.success and elapsed < 3
    assert len(text) <= sandbox.MAX_OUTPUT_BYTES + 100 and text.endswith(f"[output truncated at {sandbox.MAX_OUTPUT_BYTES} bytes]")


@needs_bwrap
def test_many_open_files_are_refused():
    res = run(
        """
        fs = []
        try:
            while True:
                fs.append(open("/dev/null"))
        except OSError as e:
            print(len(fs), e.errno)
        """
    )
    count, errno = res.stdout.split()
    assert int(count) < sandbox.MAX_OPEN_FILES and errno == "24"


@needs_bwrap
def test_hostname_change_stays_inside():
    before = socket.gethostname()
    res = run("import socket\ntry:\n    socket.sethostname('pwned')\nexcept OSError: pass\nprint(socket.gethostname())")
    assert res.stdout == "sandbox\n"
    assert socket.gethostname() == before


# ----------------------------------------------------------------------------------------------------------
# the insecure mode (bubblewrap unavailable, caller opted in)


@pytest.fixture
def insecure(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "pretend bubblewrap is missing")
    monkeypatch.setattr(sandbox, "_warned", [True])  # keep the test output quiet
    if os.geteuid() == 0 and not sandbox._others_can_run(sandbox._python_executable()):
        # e.g. pyenv under /root: the throwaway uid cannot run it; the system's Python serves for these tests
        system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not os.path.exists(system_python):
            pytest.skip("no interpreter that an unprivileged uid can run")
        monkeypatch.setattr(sandbox, "_python_executable", lambda: system_python)


def test_insecure_mode_as_root_refuses_a_private_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "pretend bubblewrap is missing")
    monkeypatch.setattr(sandbox, "_warned", [True])
    monkeypatch.setattr(sandbox, "_others_can_run", lambda exe: False)
    monkeypatch.setattr(sandbox, "_run_uid", lambda: 123456)
    with pytest.raises(NanochatError, match="apt-get install bubblewrap"):
        run_python("print(1)", allow_insecure=True)


def test_insecure_mode_runs_with_limits_and_scrubbed_env(insecure, monkeypatch):
    monkeypatch.setenv("NANOCHAT_SECRET", "hunter2")
    res = run_python("import os; print(sorted(os.environ)); print(open('/proc/self/status').read().count('x'))", allow_insecure=True)
    assert res.success, res.stderr
    assert "NANOCHAT_SECRET" not in res.stdout and "hunter2" not in res.stdout
    res = run_python("x = bytearray(1 << 30)", allow_insecure=True, memory_mb=128)
    assert res.memory_exceeded
    t0 = time.monotonic()
    res = run_python("while True: pass", allow_insecure=True, timeout=1)
    assert res.timed_out and time.monotonic() - t0 < 4


def test_insecure_mode_kills_escaped_grandchildren_and_cleans_up(insecure):
    tag = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"
    res = run_python(
        f"import subprocess, os\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)\nprint(os.getcwd())",
        allow_insecure=True,
    )
    work = res.stdout.strip()
    time.sleep(0.2)
    if os.geteuid() == 0:  # the per-run uid lets it find escapees that left the process group
        assert host_processes_matching(tag) == []
    else:
        for pid in host_processes_matching(tag):
            os.kill(pid, signal.SIGKILL)
    assert work.startswith(tempfile.gettempdir()) and not os.path.exists(work)


# ----------------------------------------------------------------------------------------------------------
# the seccomp filter


@needs_bwrap
@pytest.mark.skipif(sandbox.seccomp_program() is None, reason="no seccomp table for this CPU")
def test_seccomp_refuses_new_user_namespaces_and_kernel_attack_surface():
    res = run(
        """
        import ctypes, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        print("unshare-user", libc.unshare(0x10000000), ctypes.get_errno())
        print(subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode)
        nr = {"x86_64": (425, 250, 321), "aarch64": (425, 219, 280)}[__import__("platform").machine()]
        for name, n in zip(["io_uring_setup", "keyctl", "bpf"], nr):
            print(name, libc.syscall(n, 0, 0, 0), ctypes.get_errno())
        """
    )
    lines = res.stdout.splitlines()
    assert lines[0] == "unshare-user -1 1" and lines[1] != "0"
    assert lines[2:] == ["io_uring_setup -1 1", "keyctl -1 1", "bpf -1 1"]


@needs_bwrap
def test_seccomp_leaves_ordinary_programs_alone():
    res = run(
        """
        import os, subprocess, threading, multiprocessing
        out = []
        t = threading.Thread(target=out.append, args=("thread",)); t.start(); t.join()
        out.append(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out.append(os.waitpid(pid, 0)[1] >> 8)
        with multiprocessing.Pool(2) as pool:
            out.append(sum(pool.map(abs, [-1, -2, -3])))
        print(out)
        """
    )
    assert res.stdout == "['thread', 'child', 7, 6]\n", res.stderr


@needs_bwrap
@pytest.mark.skipif(__import__("platform").machine() != "x86_64" or sandbox.seccomp_program() is None, reason="x86_64 only")
def test_seccomp_kills_a_switch_to_the_32_bit_syscall_abi():
    res = run(
        """
        import ctypes, mmap
        code = bytes([0xB8, 0x14, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20 (getpid); int 0x80; ret
        buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(code)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        print("calling", flush=True)
        print("returned", ctypes.CFUNCTYPE(ctypes.c_int)(addr)())
        """
    )
    assert res.stdout == "calling\n" and res.error == "killed by signal SIGSYS" and res.exit_code == -31


def test_seccomp_program_shape():
    import struct

    assert sandbox.seccomp_program("sparc") is None
    for machine in ("x86_64", "aarch64"):
        prog = sandbox.seccomp_program(machine)
        assert len(prog) % 8 == 0 and len(prog) // 8 < 4096  # the kernel's BPF_MAXINSNS
        insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
        assert insns[0] == (0x20, 0, 0, 4) and insns[-1] == (0x06, 0, 0, 0x7FFF0000)  # load arch ... allow
        for i, (code, jt, jf, _) in enumerate(insns):  # every jump lands inside the program
            if code & 0x07 == 0x05:
                assert i + 1 + max(jt, jf) < len(insns)
