"""The CLI's error contract, one table over every command: each row is (argv, exit code, part of the message).

A failing command prints exactly one non-empty line on stderr (no traceback, no usage box), exits 2 for bad
usage (unknown option, bad value type, out-of-range value, conflicting flags, a value outside a fixed set)
and 1 for a user error (missing checkpoint, data or tokenizer, busy port), and says how to fix it.

Rows run through `nanochat.cli.main`, the installed entry point, in this process (fast: no training, an
empty NANOCHAT_HOME per row); the rows marked `SUBPROCESS` also run as `python -m nanochat`. The home is
empty, so a usage row also shows that its check comes before anything is loaded: checked later, it would
fail on the missing tokenizer, data or checkpoint instead (exit 1, another message).
"""

from __future__ import annotations

import io
import os
import socket
import sys

import pytest

from tests.conftest import run_cli

# ---- what a row may need in its home. No training: the checkpoints are intact (their manifests check
# out) but hold no model, so a command that got as far as loading one would fail differently.


def _checkpoints(source: str, tag: str, steps=(100, 200)) -> None:
    import torch

    from nanochat.common import checkpoint as ck

    for step in steps:
        ck.save_checkpoint(ck.checkpoint_dir(source, tag), step, model_state={"w": torch.zeros(1)}, meta={"step": step}, optimizer_state={}, rank_state={})


def sft_d4(home):
    _checkpoints("sft", "d4")


def base_d4(home):
    _checkpoints("base", "d4")


def damaged_speedrun_state(home):
    (home / "speedrun").mkdir()
    (home / "speedrun" / "state.json").write_text("{not json")


def imported_notes(home):
    (home / "data" / "notes").mkdir(parents=True)


SETUPS = {"sft_d4": sft_d4, "base_d4": base_d4, "damaged_speedrun_state": damaged_speedrun_state, "imported_notes": imported_notes}
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there, a connection is refused at once

# (argv, exit code, substring of the one line, setup or None, extra environment or None); click's own
# wording differs between versions, so its rows check the part nanochat adds: where to read the options
# {busy_port}: a port this test holds open; {free_port}: one nobody listens on
ROWS = [
    # the root command
    ("pretrian", 2, "Did you mean 'pretrain'", None, None),
    ("--no-such-option", 2, "--no-such-option", None, None),
    # env
    ("env --foo", 2, "(see `nanochat env -h`)", None, None),
    # data download
    ("data download --dataset nope", 2, "use climbmix or fineweb-edu", None, None),
    ("data download --shards 2 --for-depth 2", 2, "give --shards or --for-depth, not both", None, None),
    ("data download --shards 0", 2, "--shards 0 is out of range", None, None),
    ("data download --workers 0", 2, "--workers 0 is out of range; use 1 or more", None, None),
    ("data download --for-depth 0", 2, "--for-depth 0 is out of range", None, None),
    ("data download --shards 1 --ratio -1", 2, "--ratio -1 is out of range", None, None),
    ("data download --shards 1 --retries 1", 1, "cannot reach", None, {"NANOCHAT_HF_BASE": UNREACHABLE, "NANOCHAT_DOWNLOAD_BACKOFF": "0"}),
    # data prepare-evals
    ("data prepare-evals --offline=yes", 2, "(see `nanochat data prepare-evals -h`)", None, None),
    ("data prepare-evals", 1, "use `nanochat data prepare-evals --offline`", None, {"NANOCHAT_CORE_BUNDLE_URL": UNREACHABLE + "/x.zip"}),
    # data import
    ("data import notes.txt", 2, "Missing option '--name' (see `nanochat data import -h`)", None, None),
    ("data import notes.txt --name 'my notes'", 2, "must be letters, digits", None, None),
    ("data import notes.txt --name demo", 2, "is a built-in data set name", None, None),
    ("data import notes.txt --name n --val-fraction 0.9", 2, "--val-fraction 0.9 is out of range; use more than 0 to 0.5", None, None),
    ("data import notes.txt --name n --max-doc-chars -1", 2, "--max-doc-chars -1 is out of range; use 0 or more", None, None),
    ("data import /no/such/file.txt --name n", 1, "no such file or folder", None, None),
    ("data import /no/such/file.txt --name notes", 1, "pass --force to replace it", "imported_notes", None),
    # data list
    ("data list --depth 0", 2, "--depth 0 is out of range; use 1 or more", None, None),
    # tokenize-train
    ("tokenize-train --vocab-size 100", 2, "--vocab-size 100 is out of range; use 265", None, None),
    ("tokenize-train --max-chars 0", 2, "--max-chars 0 is out of range", None, None),
    ("tokenize-train --doc-cap -3", 2, "--doc-cap -3 is out of range; use 1 or more", None, None),
    ("tokenize-train --vocab-size many", 2, "--vocab-size 'many' is not a number; give a size such as 32768, or auto", None, None),
    ("tokenize-train --data nosuchset", 1, "unknown data set 'nosuchset'", None, None),
    # tokenize-eval
    ("tokenize-eval extra", 2, "unexpected extra argument", None, None),
    ("tokenize-eval --data nosuchset", 1, "unknown data set 'nosuchset'", None, None),
    ("tokenize-eval", 1, "nanochat tokenize-train", None, None),
    # pretrain: every value below is refused before the tokenizer is looked for (the home has none)
    ("pretrain --num-iterations -5", 2, "--num-iterations -5 is out of range; use -1", None, None),
    ("pretrain --num-iterations 0", 2, "--num-iterations 0 is out of range", None, None),
    ("pretrain --num-iterations 5.5", 2, "Invalid value for '--num-iterations'", None, None),
    ("pretrain --depth 0", 2, "--depth 0 is out of range; use 1 or more", None, None),
    ("pretrain --max-seq-len 0", 2, "--max-seq-len 0 is too short", None, None),
    ("pretrain --device-batch-size -1", 2, "--device-batch-size '-1' must be auto or a positive number of rows", None, None),
    ("pretrain --total-batch-size 0", 2, "--total-batch-size '0' must be auto or a positive number", None, None),
    ("pretrain --embedding-lr -0.1", 2, "--embedding-lr -0.1 is out of range", None, None),
    ("pretrain --weight-decay -1", 2, "--weight-decay -1 is out of range", None, None),
    ("pretrain --warmdown-ratio 1.5", 2, "--warmdown-ratio 1.5 is out of range; use 0 to 1", None, None),
    ("pretrain --target-flops 0", 2, "--target-flops 0 is out of range; use -1 (off)", None, None),
    ("pretrain --eval-every 0", 2, "--eval-every 0 is out of range; use -1 (off) or 1 or more", None, None),
    ("pretrain --save-every -7", 2, "--save-every -7 is out of range", None, None),
    ("pretrain --head-dim 127", 2, "--head-dim 127 is odd", None, None),
    ("pretrain --window-pattern SXL", 2, "--window-pattern 'SXL' must be letters S", None, None),
    ("pretrain --resume sometimes", 2, "--resume 'sometimes' must be auto, never or a step number", None, None),
    ("pretrain --device tpu", 2, "unknown device 'tpu'", None, None),
    ("pretrain --nproc 0", 2, "--nproc 0 is not a process count", None, None),
    ("pretrain --fp8", 2, "drop --fp8", None, None),
    ("pretrain --data nosuchset", 1, "unknown data set 'nosuchset'", None, None),
    ("pretrain --data nosuchset --dry-run", 1, "unknown data set 'nosuchset'", None, None),
    ("pretrain --data web", 1, "nanochat data download", None, None),
    # sft: a base checkpoint folder exists, so a late check would fail on loading it, not on the option
    ("sft --data nosuchset", 2, "--data 'nosuchset' is not an SFT mixture; use web", "base_d4", None),
    ("sft --num-iterations -5", 2, "--num-iterations -5 is out of range; use -1 (one epoch)", "base_d4", None),
    ("sft --eval-every 0", 2, "--eval-every 0 is out of range; use -1 (off)", "base_d4", None),
    ("sft --max-seq-len 0", 2, "--max-seq-len 0 is too short", "base_d4", None),
    ("sft --device-batch-size 0", 2, "--device-batch-size 0 is out of range", "base_d4", None),
    ("sft --matrix-lr -1", 2, "--matrix-lr -1 is out of range", "base_d4", None),
    ("sft --source rl", 2, "SFT starts from base", "base_d4", None),
    ("sft --step -3", 2, "--step -3 is out of range", "base_d4", None),
    ("sft", 1, "no valid base checkpoint", None, None),
    ("sft --model-tag d9", 1, "no base checkpoints for --model-tag d9; tags there: d4", "base_d4", None),
    ("sft --step 999", 1, "no checkpoint step 999 for base/d4; steps there: 100, 200; pass one of them or omit --step", "base_d4", None),
    # rl
    ("rl --num-iterations 0", 2, "--num-iterations 0 is out of range", "sft_d4", None),
    ("rl --temperature -1", 2, "--temperature -1 is out of range; use a number of at least 0", "sft_d4", None),
    ("rl --top-k -1", 2, "--top-k -1 is out of range; use 0 or more", "sft_d4", None),
    ("rl --eval-every 0", 2, "--eval-every 0 is out of range; use -1 (off)", "sft_d4", None),
    ("rl --num-samples 6 --device-batch-size 4", 2, "multiple of --device-batch-size", "sft_d4", None),
    ("rl --source chat", 2, "--source 'chat' is not one of the choices; use base, sft or rl", "sft_d4", None),
    ("rl", 1, "no valid sft checkpoint", None, None),
    ("rl --model-tag d9", 1, "no sft checkpoints for --model-tag d9; tags there: d4", "sft_d4", None),
    ("rl --step 999", 1, "no checkpoint step 999 for sft/d4; steps there: 100, 200", "sft_d4", None),
    # eval
    ("eval --max-per-task 0", 2, "--max-per-task 0 is out of range; use -1 (all) or 1 or more", "base_d4", None),
    ("eval --max-per-task -5", 2, "--max-per-task -5 is out of range", "base_d4", None),
    ("eval --tasks core,nope", 2, "unknown eval task(s) nope", "base_d4", None),
    ("eval --source chat", 2, "--source 'chat' is not one of the choices", "base_d4", None),
    ("eval --batch-size 0", 2, "--batch-size 0 is out of range", "base_d4", None),
    ("eval --temperature -0.5", 2, "--temperature -0.5 is out of range", "base_d4", None),
    ("eval --top-k -2", 2, "--top-k -2 is out of range", "base_d4", None),
    ("eval --nproc 0", 2, "--nproc 0 is not a process count", "base_d4", None),
    ("eval", 1, "no valid base checkpoint", None, None),
    ("eval --data nosuchset", 1, "unknown data set 'nosuchset'", "base_d4", None),
    ("eval --source sft --model-tag d9", 1, "no sft checkpoints for --model-tag d9; tags there: d4", "sft_d4", None),
    ("eval --source sft --step 999", 1, "no checkpoint step 999 for sft/d4; steps there: 100, 200", "sft_d4", None),
    # chat
    ("chat -p hi --temperature -1", 2, "--temperature -1 is out of range; use 0 to 2", "sft_d4", None),
    ("chat -p hi --top-k -1", 2, "--top-k -1 is out of range; use 0 or more", "sft_d4", None),
    ("chat -p hi --max-tokens 0", 2, "--max-tokens 0 is out of range; use 1 or more", "sft_d4", None),
    ("chat -p hi --source chat", 2, "--source 'chat' is not one of the choices", "sft_d4", None),
    ("chat -p hi --device gpu", 2, "unknown device 'gpu'", "sft_d4", None),
    ("chat -p hi", 1, "nanochat sft", None, None),
    ("chat -p hi --step 999", 1, "no checkpoint step 999 for sft/d4; steps there: 100, 200; pass one of them or omit --step", "sft_d4", None),
    ("chat -p hi --model-tag d9", 1, "no sft checkpoints for --model-tag d9; tags there: d4; pass one of them", "sft_d4", None),
    # serve
    ("serve --port 0", 2, "--port 0 is not a port; use 1 to 65535", None, None),
    ("serve --port 70000", 2, "--port 70000 is not a port", None, None),
    ("serve --workers 0", 2, "--workers 0 is out of range; use 1 or more", None, None),
    ("serve --batch-slots 0", 2, "--batch-slots 0 is out of range; use 1 or more", None, None),
    ("serve --source chat", 2, "--source 'chat' is not one of the choices", None, None),
    ("serve --host 0.0.0.0 --port {free_port}", 2, "pass --api-key KEY", None, None),
    ("serve --port {busy_port}", 1, "port {busy_port} on 127.0.0.1 is in use; pass --port N or stop the other server", None, None),
    ("serve --port {free_port}", 1, "nanochat sft", None, None),
    ("serve --port {free_port} --step 999", 1, "no checkpoint step 999 for sft/d4; steps there: 100, 200", "sft_d4", None),
    ("serve --port {free_port} --source sft --model-tag d9", 1, "no sft checkpoints for --model-tag d9; tags there: d4", "sft_d4", None),
    # speedrun
    ("speedrun --depth 0 --dry-run", 2, "--depth 0 must be at least 1", None, None),
    ("speedrun --demo --from-stage nope --dry-run", 2, "--from-stage 'nope' is not a stage of this run", None, None),
    ("speedrun --demo --nproc 0 --dry-run", 2, "--nproc 0 is not a process count", None, None),
    ("speedrun --demo --device tpu --dry-run", 2, "unknown device 'tpu'", None, None),
    ("speedrun --demo --dry-run", 1, "is damaged", "damaged_speedrun_state", None),
    # report
    ("report --foo", 2, "(see `nanochat report -h`)", None, None),
    ("report", 1, "nothing recorded yet", None, None),
    # sweep
    ("sweep everything", 2, "No such command 'everything'", None, None),
    ("sweep miniseries --depths 0 --dry-run", 2, "--depths 0 must list depths of at least 1", None, None),
    ("sweep isoflop --data nosuchset --budgets 1e12 --depths 1", 1, "unknown data set 'nosuchset'", None, None),
    # dist-check (hidden)
    ("dist-check --nproc 0", 2, "--nproc 0 is not a process count", None, None),
]
# the rows that also run as a separate `python -m nanochat` process
SUBPROCESS = {"serve --port {busy_port}", "pretrain --num-iterations -5", "sft --data nosuchset", "chat -p hi --step 999", "pretrian"}
PROCESS_ROWS = [r for r in ROWS if r[0] in SUBPROCESS]


@pytest.fixture
def ports():
    """A port held open by a listening socket (busy) and one nobody listens on (free)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    yield {"busy_port": busy.getsockname()[1], "free_port": free}
    busy.close()


def _argv(row: str, ports: dict) -> list[str]:
    import shlex

    return [w.format(**ports) for w in shlex.split(row)]


def _prepare(nanochat_home, tmp_path, monkeypatch, setup, env):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("one paragraph\n\nanother paragraph\n")
    if setup:
        SETUPS[setup](nanochat_home)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)


def _assert_one_line(stderr: str, code: int, got: int, hint: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert got == code, f"exit code {got}, expected {code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert hint in lines[0], f"{hint!r} not in {lines[0]!r}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("row, code, hint, setup, env", ROWS, ids=[r[0] for r in ROWS])
def test_error_row(row, code, hint, setup, env, ports, nanochat_home, tmp_path, monkeypatch, capsys):
    from nanochat import cli

    _prepare(nanochat_home, tmp_path, monkeypatch, setup, env)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # chat reads piped stdin; here there is none
    saved_env = dict(os.environ)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(_argv(row, ports))
    finally:  # some commands set variables for their own run (e.g. NANOCHAT_OFFLINE): keep rows independent
        os.environ.clear()
        os.environ.update(saved_env)
    _assert_one_line(capsys.readouterr().err, code, exit_.value.code, hint.format(**ports))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("row, code, hint, setup, env", PROCESS_ROWS, ids=[r[0] for r in PROCESS_ROWS])
def test_error_row_as_a_process(row, code, hint, setup, env, ports, nanochat_home, tmp_path, monkeypatch):
    _prepare(nanochat_home, tmp_path, monkeypatch, setup, env)
    r = run_cli(*_argv(row, ports), input="", timeout=90)
    _assert_one_line(r.stderr, code, r.returncode, hint.format(**ports))


def test_every_listed_command_has_a_usage_row_and_a_user_row():
    """The table covers every command of `nanochat --help` (and each `nanochat data` command)."""
    from tests.test_cli import COMMANDS, DATA_COMMANDS

    def rows_of(command: list[str], code: int) -> list[str]:
        return [r[0] for r in ROWS if r[1] == code and r[0].split()[: len(command)] == command]

    for c in [[c] for c in COMMANDS if c != "data"] + [["data", c] for c in DATA_COMMANDS]:
        assert rows_of(c, 2), f"no usage-error row for {' '.join(c)}"
        # env and `data list` read nothing a user could lack: no user error to provoke
        if c not in (["env"], ["data", "list"]):
            assert rows_of(c, 1), f"no user-error row for {' '.join(c)}"


@pytest.mark.parametrize("command", ["", "pretrain", "sft", "speedrun", "serve", "data", "data import", "data prepare-evals"])
def test_flags_show_no_value_type_in_help(command, capsys):
    """A flag takes no value: its help row shows no `<bool>` type."""
    from nanochat import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([*command.split(), "-h"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--help" in out and "<bool>" not in out, out
