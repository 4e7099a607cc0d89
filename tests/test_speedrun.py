"""speedrun: the printed plan, resuming from the state file and --from-stage (with fake stages), and
one real end-to-end tiny run ending in a report and an sft model that answers `nanochat chat`."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import run_cli

DEMO_STAGES = ["tokenizer", "pretrain", "base-eval", "sft", "chat-eval", "demo-prompts", "report"]


def test_dry_run_prints_every_stage_command_and_runs_nothing(nanochat_home):
    r = run_cli("speedrun", "--demo", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("$ nanochat ")]
    assert [line.split()[2] for line in lines] == ["tokenize-train", "pretrain", "eval", "sft", "eval", "chat", "report"]
    assert "--score-prompts demo" in lines[5]
    assert "--vocab-size 4096" in lines[0] and "--depth 4" in lines[1] and "--max-seq-len 256" in lines[1]
    assert "--source base" in lines[2] and "--source sft" in lines[4] and "--resume auto" in lines[3]
    assert not (nanochat_home / "speedrun").exists() and not (nanochat_home / "tokenizer").exists()
    full = run_cli("speedrun", "--depth", "26", "--dry-run")
    assert "$ nanochat data download --for-depth 26 --ratio 8" in full.stdout and "--data web" in full.stdout
    assert "--target-param-data-ratio 8 " in full.stdout
    bad = run_cli("speedrun", "--demo", "--from-stage", "nope", "--dry-run")
    assert bad.returncode == 2 and "tokenizer, pretrain" in bad.stderr


def test_stages_resume_from_the_state_file_and_from_stage(nanochat_home):
    from nanochat.common.errors import NanochatError
    from nanochat.train import speedrun as sr

    ran: list[str] = []
    fail_at = {"sft"}

    def fake(stage, signals):
        ran.append(stage.name)
        return 3 if stage.name in fail_at else 0

    with pytest.raises(NanochatError, match="stage sft failed .*continues at sft"):
        sr.speedrun(demo=True, runner=fake)
    assert ran == ["tokenizer", "pretrain", "base-eval", "sft"]
    state = json.loads((nanochat_home / "speedrun" / "state.json").read_text())
    assert set(state["stages"]) == {"tokenizer", "pretrain", "base-eval"}

    # a rerun continues at the failed stage
    ran.clear()
    fail_at.clear()
    out = sr.speedrun(demo=True, runner=fake)
    assert ran == ["sft", "chat-eval", "demo-prompts", "report"] and list(out["stages"]) == ran
    # all done: nothing runs again
    ran.clear()
    sr.speedrun(demo=True, runner=fake)
    assert ran == []
    # --from-stage reruns that stage and every one after it
    sr.speedrun(demo=True, from_stage="base-eval", runner=fake)
    assert ran == ["base-eval", "sft", "chat-eval", "demo-prompts", "report"]
    # another scale changes the tokenizer's command: everything reruns
    ran.clear()
    sr.speedrun(tiny=True, runner=fake)
    assert ran == DEMO_STAGES

    # a stage stopped by a signal (it exits 0 after saving) is not marked finished
    def stopped(stage, signals):
        signals.requested, signals.signame = True, "SIGTERM"
        return 0

    with pytest.raises(NanochatError, match="SIGTERM: stopped during stage pretrain"):
        sr.speedrun(tiny=True, from_stage="pretrain", runner=stopped)
    state = json.loads((nanochat_home / "speedrun" / "state.json").read_text())
    assert set(state["stages"]) == {"tokenizer"}
    ran.clear()
    sr.speedrun(tiny=True, runner=fake)
    assert ran == DEMO_STAGES[1:]


def test_damaged_state_file_is_one_clear_error(nanochat_home):
    (nanochat_home / "speedrun").mkdir()
    (nanochat_home / "speedrun" / "state.json").write_text("{not json")
    r = run_cli("speedrun", "--demo", "--dry-run")
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr


def test_tiny_speedrun_end_to_end(nanochat_home):
    t0 = time.time()
    r = run_cli("speedrun", "--tiny", "--device", "cpu", "--nproc", "1", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = nanochat_home / "report" / "report.md"
    assert report.is_file() and str(report) in r.stdout
    text = report.read_text()
    for title in ("Base model training", "Base model evaluation", "Supervised fine-tuning", "Chat evaluation (SFT)", "Demo prompts", "Speedrun"):
        assert f"## {title}" in text
    assert re.search(r"\d+ of 45 prompts pass \(\d+%\)", text)
    assert list((nanochat_home / "checkpoints" / "sft" / "demo").glob("step_*/manifest.json"))
    chat = run_cli("chat", "--source", "sft", "-p", "hi", "--max-tokens", "8", "--device", "cpu")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    # everything is recorded: a rerun runs nothing and only prints the summary
    again = run_cli("speedrun", "--tiny", "--device", "cpu", "--nproc", "1")
    assert again.returncode == 0 and "stage 1/" not in again.stdout and "done, skipped" in again.stdout
    print(f"tiny speedrun end to end: {time.time() - t0:.0f} s")


def test_with_rl_adds_rl_only_when_built(monkeypatch):
    from nanochat.train import speedrun as sr

    monkeypatch.setattr(sr, "rl_available", lambda: False)
    assert [s.name for s in sr.plan(demo=True, with_rl=True)] == DEMO_STAGES
    monkeypatch.setattr(sr, "rl_available", lambda: True)
    stages = {s.name: s for s in sr.plan(demo=True, with_rl=True)}
    assert list(stages) == DEMO_STAGES[:-1] + ["rl", "rl-eval", "report"]
    assert stages["rl"].args[:5] == ("rl", "--source", "sft", "--model-tag", "demo")
    # offline RL trains on a partition of GSM8K test, so the after-RL eval leaves gsm8k out
    assert "gsm8k" in stages["chat-eval"].command and "gsm8k" not in stages["rl-eval"].command


def test_cpu_sized_stages_take_one_thread_per_free_cpu(monkeypatch):
    from nanochat.train import speedrun as sr

    # others use 1.6 of 2 CPUs: one thread; 0.3 of 2: torch's default (None); 3.2 of 8: 5 threads
    assert sr.stage_threads(1.6, 2) == 1 and sr.stage_threads(2.0, 2) == 1 and sr.stage_threads(0.3, 2) is None
    assert sr.stage_threads(3.2, 8) == 5 and sr.stage_threads(None, 2) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sr.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sr, "_cpu_count", lambda: 2)
    monkeypatch.setattr(sr, "cpus_busy_elsewhere", lambda interval=0.5: 1.7)
    demo = {s.name: s for s in sr.plan(demo=True)}
    assert all(s.cpu_sized for s in demo.values()) and not any(s.cpu_sized for s in sr.plan(depth=12))
    assert sr.stage_env(demo["pretrain"])["OMP_NUM_THREADS"] == "1"
    assert sr.stage_env(sr.plan(depth=12)[2]) is None  # web runs keep torch's default
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert sr.stage_env(demo["pretrain"]) is None  # the user's choice wins
    busy = sr.cpus_busy_elsewhere(0.05)
    assert busy is None or 0.0 <= busy <= 2.0 + 1e-6
