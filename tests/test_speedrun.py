"""speedrun: the printed plan, resuming from the state file and --from-stage (with fake stages), and
one real end-to-end tiny run ending in a report and an sft model that answers `nanochat chat`."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import run_cli

DEMO_STAGES = ["tokenizer", "pretrain", "base-eval", "sft", "rl", "chat-eval", "rl-eval", "report"]
NO_RL = [s for s in DEMO_STAGES if s not in ("rl", "rl-eval")]


def test_dry_run_prints_every_stage_command_and_runs_nothing(nanochat_home):
    r = run_cli("speedrun", "--demo", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("$ nanochat ")]
    assert [line.split()[2] for line in lines] == ["tokenize-train", "pretrain", "eval", "sft", "rl", "eval", "eval", "report"]
    assert "--vocab-size 4096" in lines[0] and "--depth 4" in lines[1] and "--max-seq-len 256" in lines[1]
    assert "--source base" in lines[2] and "--source sft" in lines[5] and "--resume auto" in lines[3]
    assert "--task demo-arith" in lines[4] and "--source rl" in lines[6]
    assert not (nanochat_home / "speedrun").exists() and not (nanochat_home / "tokenizer").exists()
    full = run_cli("speedrun", "--depth", "26", "--dry-run")
    assert "$ nanochat data download --for-depth 26 --ratio 8" in full.stdout and "--data web" in full.stdout
    assert "--target-param-data-ratio 8 " in full.stdout
    skipped = run_cli("speedrun", "--demo", "--dry-run", "--skip", "rl")
    assert skipped.returncode == 0 and "$ nanochat rl" not in skipped.stdout and "--source rl" not in skipped.stdout
    assert "$ nanochat rl" in run_cli("speedrun", "--demo", "--dry-run", "--with-rl").stdout  # the old flag: accepted, RL as by default
    wrong = run_cli("speedrun", "--demo", "--dry-run", "--skip", "sft")
    assert wrong.returncode == 2 and "use --skip rl" in wrong.stderr and "Traceback" not in wrong.stderr
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
    assert ran == ["sft", "rl", "chat-eval", "rl-eval", "report"] and list(out["stages"]) == ran
    # all done: nothing runs again
    ran.clear()
    sr.speedrun(demo=True, runner=fake)
    assert ran == []
    # --from-stage reruns that stage and every one after it
    sr.speedrun(demo=True, from_stage="base-eval", runner=fake)
    assert ran == DEMO_STAGES[2:]
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
    for title in ("Base model training", "Base model evaluation", "Supervised fine-tuning", "Chat evaluation (SFT)", "Reinforcement learning", "Speedrun"):
        assert f"## {title}" in text
    assert list((nanochat_home / "checkpoints" / "sft" / "demo").glob("step_*/manifest.json"))
    rl = json.loads((nanochat_home / "report" / "sections" / "rl.json").read_text())["data"]
    assert "demo-arith pass@1 before RL (held out)" in rl and "demo-arith pass@1 (held out)" in rl and rl["final_step"] == 2
    chat = run_cli("chat", "--source", "sft", "-p", "hi", "--max-tokens", "8", "--device", "cpu")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    # everything is recorded: a rerun runs nothing and only prints the summary
    again = run_cli("speedrun", "--tiny", "--device", "cpu", "--nproc", "1")
    assert again.returncode == 0 and "stage 1/" not in again.stdout and "done, skipped" in again.stdout
    print(f"tiny speedrun end to end: {time.time() - t0:.0f} s")


def test_rl_is_a_default_stage_when_built(monkeypatch):
    from nanochat.train import speedrun as sr

    monkeypatch.setattr(sr, "rl_available", lambda: False)
    assert [s.name for s in sr.plan(demo=True)] == NO_RL
    monkeypatch.setattr(sr, "rl_available", lambda: True)
    stages = {s.name: s for s in sr.plan(demo=True)}
    assert list(stages) == DEMO_STAGES
    assert [s.name for s in sr.plan(demo=True, with_rl=False)] == NO_RL
    assert stages["rl"].args[:5] == ("rl", "--source", "sft", "--model-tag", "demo") and "--task demo-arith" in stages["rl"].command
    # the demo's RL trains on arithmetic, not GSM8K: the after-RL eval keeps gsm8k
    assert "gsm8k" in stages["chat-eval"].command and "gsm8k" in stages["rl-eval"].command
    web = {s.name: s for s in sr.plan(depth=12)}
    assert "--task" not in web["rl"].command and list(web)[-4:] == ["rl", "chat-eval", "rl-eval", "report"]
