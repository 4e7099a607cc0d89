"""What the CLI does when the machine, not the command line, is the problem (issue #17): unreadable or odd input
files, a NANOCHAT_HOME that is a file or read-only, a full disk, a read-only checkpoint folder, a run far too big for
the device's memory, checkpoints damaged although their manifest matches their bytes, and out-of-range values.

Every row runs the CLI and expects exactly one line on stderr (`error: ...`, no traceback), exit code 1 or 2, the
part of the message that names the path or value and the fix, and nothing half-written left behind: the home's
file tree is the same before and after (no `.tmp-*`, no partial data set or checkpoint folder).

Most rows run in this process through `nanochat.cli.main`. Rows that need the operating system to refuse (a
read-only file system, a full disk, a file the user may not read) run `python -m nanochat` in a private user and
mount namespace (`unshare -rm`): a read-only or tiny tmpfs is mounted over the target there, and "unreadable" is a
mode-000 file owned by a user the namespace does not map. That works as root too, where chmod blocks nothing;
without `unshare` those rows are skipped, saying why. A last test goes over every numeric option of every command.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from tests.test_cli_errors import _assert_one_line
from tests.train_helpers import TINY, install_tokenizer

# ---- setups: (home, work folder) -> None; the work folder is the current directory of the row


def notes(home: Path, work: Path) -> None:
    (work / "notes.jsonl").write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(3)))


def fifo(home: Path, work: Path) -> None:
    os.mkfifo(work / "pipe.txt")


def home_is_a_file(home: Path, work: Path) -> None:
    notes(home, work)
    (work / "home-file").write_text("not a folder\n")


def unreadable(home: Path, work: Path) -> None:
    notes(home, work)
    (work / "notes.jsonl").chmod(0)
    os.chown(work / "notes.jsonl", 12345, 12345)  # a user the namespace does not map: its root cannot read it


def tokenizer(home: Path, work: Path) -> None:
    install_tokenizer(home)


def checkpoints_is_a_file(home: Path, work: Path) -> None:
    install_tokenizer(home)
    (home / "checkpoints" / "base").mkdir(parents=True)
    (home / "checkpoints" / "base" / "d2").write_text("a file where the checkpoint folder goes\n")


def _save(source: str, tag: str, steps) -> list[Path]:
    import torch

    from nanochat.common import checkpoint as ck

    return [ck.save_checkpoint(ck.checkpoint_dir(source, tag), s, model_state={"w": torch.zeros(2)}, meta={"step": s},
                               optimizer_state={}, rank_state={}) for s in steps]  # fmt: skip


def damage(folder: Path, name: str, data: bytes) -> None:
    """Replace `name` in a checkpoint folder by `data` and make the manifest match it (size and sha256)."""
    import hashlib
    import json

    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


BAD_HEADER = (1 << 40).to_bytes(8, "little") + b"{}"  # a safetensors header far longer than the file
BAD_JSON = b'{"step": 100,'


def base_d4_bad_meta(home: Path, work: Path) -> None:
    damage(_save("base", "d4", [100])[0], "meta.json", BAD_JSON)


def sft_d4_bad_weights(home: Path, work: Path) -> None:
    damage(_save("sft", "d4", [100])[0], "model.safetensors", BAD_HEADER)


def d2_all_damaged(home: Path, work: Path) -> None:
    install_tokenizer(home)
    first, second = _save("base", "d2", [100, 200])
    damage(first, "meta.json", BAD_JSON)
    damage(second, "model.safetensors", BAD_HEADER)


SETUPS = {f.__name__: f for f in (notes, fifo, home_is_a_file, unreadable, tokenizer, checkpoints_is_a_file, base_d4_bad_meta,
                                  sft_d4_bad_weights, d2_all_damaged)}  # fmt: skip

# how a row runs: here (in this process), or in a namespace where {home}/TARGET is a read-only or a 4 KiB tmpfs
HERE, READ_ONLY, FULL, NO_USERS = "here", "read-only", "full", "unmapped owner"
TINY_RUN = " ".join(TINY) + " --num-iterations 2 --eval-every -1"

# (id, argv, exit code, part of the one line, setup, how, where the tmpfs goes under the home (or None), environment)
ROWS = [
    ("import unreadable", "data import notes.jsonl --name n", 1, "permission denied on notes.jsonl; check its permissions", "unreadable", NO_USERS, None, None),
    ("import fifo", "data import pipe.txt --name n", 1, "pipe.txt: not a regular file (a named pipe)", "fifo", HERE, None, None),
    ("import /dev/zero", "data import /dev/zero --name n", 1, "/dev/zero: not a regular file (a character device)", None, HERE, None, None),
    ("home is a file", "data import notes.jsonl --name n", 1, "is a file, not a folder; set NANOCHAT_HOME to a folder", "home_is_a_file", HERE, None,
     {"NANOCHAT_HOME": "{work}/home-file"}),
    ("home is read-only", "data import notes.jsonl --name n", 1, "cannot write {home}/data: read-only file system; set NANOCHAT_HOME to a writable folder",
     "notes", READ_ONLY, ".", None),
    ("tokenizer into a read-only home", "tokenize-train --data demo --vocab-size 300 --max-chars 20000", 1,
     "read-only file system; set NANOCHAT_HOME to a writable folder", None, READ_ONLY, ".", None),
    ("import onto a full disk", "data import {readme} --name n", 1, "cannot write {home}/data/n: no space left on the device; free some space",
     None, FULL, "data", None),
    ("checkpoints read-only", f"pretrain {TINY_RUN}", 1, "cannot write {home}/checkpoints/base/d2: read-only file system", "tokenizer", READ_ONLY,
     "checkpoints", None),
    ("checkpoint folder is a file", f"pretrain {TINY_RUN}", 1, "{home}/checkpoints/base/d2 is a file, not a folder", "checkpoints_is_a_file", HERE,
     None, None),
    ("pretrain --depth 1000", "pretrain --depth 1000 --data demo --device cpu", 1, "far more than the", "tokenizer", HERE, None, None),
    ("damaged meta, step asked for", "eval --model-tag d4 --step 100", 1, "checkpoints/base/d4/step_000100: meta.json matches its manifest but cannot",
     "base_d4_bad_meta", HERE, None, None),
    ("damaged weights, newest asked for", "chat -p hi --source sft", 1, "every step folder is damaged (the newest: checkpoint {home}/checkpoints/sft",
     "sft_d4_bad_weights", HERE, None, None),
    ("resume auto, all damaged", f"pretrain {TINY_RUN}", 1, "every checkpoint in {home}/checkpoints/base/d2 is damaged", "d2_all_damaged", HERE,
     None, None),
    ("resume a damaged step", f"pretrain {TINY_RUN} --resume 200", 1, "step_000200: model.safetensors matches its manifest but cannot be read",
     "d2_all_damaged", HERE, None, None),
    ("pretrain --device tpu --dry-run", "pretrain --device tpu --dry-run", 2, "unknown device 'tpu'", None, HERE, None, None),
    ("eval --max-per-task -5", "eval --max-per-task -5", 2, "--max-per-task -5 is out of range; use -1 (all) or 1 or more", None, HERE, None, None),
    ("chat --seed -1", "chat -p hi --seed -1", 2, "--seed -1 is out of range; use 0 or more", None, HERE, None, None),
    ("serve --queue-size -1", "serve --queue-size -1", 2, "--queue-size -1 is out of range; use 0 or more", None, HERE, None, None),
    ("serve --port 65536", "serve --port 65536", 2, "--port 65536 is not a port; use 1 to 65535", None, HERE, None, None),
    ("tokenize-train --depth 0", "tokenize-train --depth 0", 2, "--depth 0 is out of range; use 1 or more", None, HERE, None, None),
    ("rl --temperature nan", "rl --temperature nan", 2, "--temperature nan is out of range", None, HERE, None, None),
    ("sft --seed -3", "sft --seed -3", 2, "--seed -3 is out of range", None, HERE, None, None),
    ("export --step -1", "export --out x --step -1", 2, "--step -1 is out of range", None, HERE, None, None),
    ("speedrun ratio inf", "speedrun --demo --target-param-data-ratio inf --dry-run", 2, "--target-param-data-ratio inf is out of range", None, HERE,
     None, None),
    ("sweep --nproc 0", "sweep miniseries --nproc 0 --dry-run", 2, "--nproc 0 is out of range", None, HERE, None, None),
    ("data import --val-fraction 0", "data import notes.jsonl --name n --val-fraction 0", 2, "--val-fraction 0 is out of range", "notes", HERE, None,
     None),
]


@lru_cache(maxsize=1)
def unshare_missing() -> str | None:
    """Why rows that need a private user and mount namespace cannot run here (None: they can)."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o ro none /mnt 2>/dev/null || mount -t tmpfs -o ro none /tmp"],
                           capture_output=True, text=True)  # fmt: skip
    return None if probe.returncode == 0 else f"unshare -rm cannot mount a tmpfs here ({probe.stderr.strip()[:80]})"


def tree(root: Path) -> set[str]:
    """Every path under `root` (relative), to see that a failed command left nothing behind."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.is_dir() else set()


def _isolated(argv: list[str], how: str, target: Path | None, listing: Path) -> subprocess.CompletedProcess:
    """`python -m nanochat ARGV` in a private user+mount namespace, a tmpfs over `target` (read-only, or 4 KiB for a
    full disk); `listing` gets the files under the target as the command left them (the tmpfs goes with the namespace)."""
    mount = ""
    if target is not None:
        options = "ro" if how == READ_ONLY else "size=4k"
        mount = f"mount -t tmpfs -o {options} none {shlex.quote(str(target))} && "
        mount += "" if how == READ_ONLY else f"chmod 777 {shlex.quote(str(target))} && "
    script = f'{mount}"$@"; rc=$?; find {shlex.quote(str(target or "/nonexistent"))} -mindepth 1 > {shlex.quote(str(listing))} 2>/dev/null; exit $rc'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "nanochat", *argv],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("row, argv, code, hint, setup, how, target, env", ROWS, ids=[r[0] for r in ROWS])
def test_failure_row(row, argv, code, hint, setup, how, target, env, nanochat_home, tmp_path, monkeypatch, capsys):
    from nanochat import cli

    if how != HERE and unshare_missing():
        pytest.skip(f"needs a private user and mount namespace to make the OS refuse: {unshare_missing()}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fill = {"home": str(nanochat_home), "work": str(work), "readme": str(Path(__file__).resolve().parent.parent / "README.md")}
    if setup:
        SETUPS[setup](nanochat_home, work)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v.format(**fill))
    if target:
        (nanochat_home / target).mkdir(parents=True, exist_ok=True)  # the mount point
    before = tree(nanochat_home)
    args = [w.format(**fill) for w in shlex.split(argv)]
    if how == HERE:
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        stderr, got = capsys.readouterr().err, exit_.value.code
        left = tree(nanochat_home) - before
    else:
        where = nanochat_home / target if target else None
        r = _isolated(args, how, where, tmp_path / "listing.txt")
        stderr, got = r.stderr, r.returncode
        listed = (tmp_path / "listing.txt").read_text().split() if (tmp_path / "listing.txt").exists() else []
        left = {p for p in listed if Path(p).name.startswith(".tmp-") or how == FULL} | (tree(nanochat_home) - before)
    _assert_one_line(stderr, code, got, hint.format(**fill))
    assert not left, f"left behind: {sorted(left)}"


def test_debug_still_shows_the_traceback(nanochat_home, tmp_path, monkeypatch, capsys):
    """--debug: the same one line, after the traceback of where the OS error came from."""
    from nanochat import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "home-file").write_text("x")
    notes(tmp_path, tmp_path)
    monkeypatch.setenv("NANOCHAT_HOME", str(tmp_path / "home-file" / "inside"))  # a path through a file: ENOTDIR when written
    monkeypatch.setenv("NANOCHAT_DEBUG", "0")  # --debug sets it to 1 for the run: put it back afterwards
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--debug", "data", "import", "notes.jsonl", "--name", "n"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "Traceback" in err and "NotADirectoryError" in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "home-file/inside" in last and "is not a folder" in last, last


@pytest.mark.parametrize(
    "errno_name, filename, out, expected",
    [
        ("EROFS", "{home}/data/x", None, "cannot write {home}/data/x: read-only file system; set NANOCHAT_HOME to a writable folder"),
        ("ENOSPC", "/elsewhere/f", None, "cannot write /elsewhere/f: no space left on the device; free some space there, or use another path on another disk"),
        ("EACCES", "/exports/m/config.json", "/exports/m", "permission denied on /exports/m/config.json; check its permissions, or pass another --out"),
        ("EISDIR", "{home}/tokenizer", None, "{home}/tokenizer is a folder, not a file; remove or rename that folder, or set NANOCHAT_HOME to a writable folder"),
        ("ENOSPC", None, None, "cannot write a file: no space left on the device; free some space there, or set NANOCHAT_HOME to a writable folder on another disk"),
    ],
)
def test_os_error_lines_by_hand(errno_name, filename, out, expected, tmp_path):
    """The errno -> message table, with the fix pointing at the home, --out or another path (written out by hand)."""
    import errno

    from nanochat.common.errors import os_error_line

    home = str(tmp_path / "home")
    e = OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), filename.format(home=home) if filename else None)
    assert os_error_line(e, home, out) == expected.format(home=home)


def test_an_os_error_that_is_no_file_problem_keeps_its_traceback():
    """A refused connection is an OSError too, but no path the user can fix: the boundary leaves it alone (a bug)."""
    import errno

    from nanochat.common.errors import os_error_line

    assert os_error_line(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) is None


def test_latest_skips_a_damaged_checkpoint_with_one_warning(nanochat_home, capsys):
    """A newer checkpoint whose manifest matches but whose header is garbage is skipped for the older one, with one line."""
    from nanochat.common import checkpoint as ck

    _save("base", "d4", [100, 200])
    damage(nanochat_home / "checkpoints" / "base" / "d4" / "step_000200", "model.safetensors", BAD_HEADER)
    info = ck.resolve_checkpoint("base", "d4")
    assert info.step == 100
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "step_000200" in lines[0] and "skipping it" in lines[0], lines


def test_a_failed_save_leaves_no_temporary_folder(nanochat_home, monkeypatch):
    """A save that fails midway (here: the weights cannot be written) removes its temporary folder."""
    import safetensors.torch

    from nanochat.common import checkpoint as ck

    def refuse(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    with pytest.raises(OSError) as e:
        _save("base", "d4", [100])
    assert e.value.filename == str(ck.checkpoint_dir("base", "d4") / "step_000100")  # named, for the one-line error
    assert list(ck.checkpoint_dir("base", "d4").iterdir()) == []


def test_dry_run_warns_that_a_run_would_not_fit(nanochat_home, capsys):
    """The dry run still prints its plan for depth 1000 on this machine, and says on one line that the run would stop."""
    from nanochat import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain", "--depth", "1000", "--device", "cpu", "--dry-run"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0
    assert "memory per device" in captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "a real run would stop here" in lines[0] and "--device-batch-size" in lines[0], lines


# ---- every numeric option of every command refuses a value out of its range, at parse time


def _numeric_options():
    import typer

    from nanochat import cli

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
            return
        for p in command.params:
            kind = getattr(getattr(p, "type_descriptor", None), "annotation", None)
            if getattr(p, "param_type_name", "") == "option" and kind in (int, float):
                yield path, p.opts[0], kind

    return list(walk(typer.main.get_command(cli.app), []))


# what a command needs on its line besides the option, so that the option is what fails
NEEDS = {("chat",): ["-p", "hi"], ("sweep", "isoflop"): ["--budgets", "1e12", "--dry-run"], ("sweep", "miniseries"): ["--dry-run"],
         ("speedrun",): ["--dry-run"], ("pretrain",): ["--dry-run"]}  # fmt: skip
OPTIONS = [(path, opt, bad) for path, opt, kind in _numeric_options() for bad in (["-7"] + (["nan", "inf"] if kind is float else []))]


@pytest.mark.timeout(300)
def test_every_numeric_option_refuses_a_value_out_of_range(nanochat_home, tmp_path, monkeypatch, capsys):
    """-7 for every integer option (no count, step, seed, port or budget takes it), also NaN and infinity for every real one:
    each is refused with one line naming the option, exit 2, before anything else is looked at (the home is empty)."""
    from nanochat import cli

    assert len(OPTIONS) > 150  # the walk found the commands' options
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    failures = []
    for path, opt, bad in OPTIONS:
        argv = [*path, opt, bad, *NEEDS.get(tuple(path), [])]
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if exit_.value.code != 2 or len(lines) != 1 or opt not in lines[0]:
            failures.append(f"{' '.join(argv)} -> exit {exit_.value.code}: {err.strip()[:160]}")
    assert not failures, "\n".join(failures)
