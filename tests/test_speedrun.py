"""speedrun: the printed plan, resuming from the state file and --from-stage (with fake stages), and
one real end-to-end tiny run ending in a report and an sft model that answers `nanochat chat`."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import run_cli

DEMO_STAGES = ["tokenizer", "pretrain", "base-eval", "sft", "rl", "chat-eval", "demo-prompts", "rl-eval", "report"]
NO_RL = [s for s in DEMO_STAGES if s not in ("rl", "rl-eval")]


def test_dry_run_prints_every_stage_command_and_runs_nothing(nanochat_home):
    r = run_cli("speedrun", "--demo", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("$ nanochat ")]
    assert [line.split()[2] for line in lines] == ["tokenize-train", "pretrain", "eval", "sft", "rl", "eval", "chat", "eval", "report"]
    assert "--score-prompts demo" in lines[6]
    assert "--vocab-size 4096" in lines[0] and "--depth 4" in lines[1] and "--max-seq-len 256" in lines[1]
    assert "--source base" in lines[2] and "--source sft" in lines[5] and "--resume auto" in lines[3]
    assert "--task demo-arith" in lines[4] and "--source rl" in lines[7]
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
    assert ran == ["sft", "rl", "chat-eval", "demo-prompts", "rl-eval", "report"] and list(out["stages"]) == ran
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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny speedrun for the tests below: (its home, its stdout, the wall time this test measured)."""
    home = tmp_path_factory.mktemp("speedrun-home")
    t0 = time.perf_counter()
    r = run_cli("speedrun", "--tiny", "--device", "cpu", "--nproc", "1", env={"NANOCHAT_HOME": str(home)}, timeout=600)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"tiny speedrun: {wall:.0f} s")
    return home, r.stdout, wall


def test_tiny_speedrun_end_to_end(tiny_run):
    home, out, _ = tiny_run
    env = {"NANOCHAT_HOME": str(home)}
    report = home / "report" / "report.md"
    assert report.is_file() and str(report) in out
    text = report.read_text()
    for title in ("Summary", "Timings", "Base model training", "Base model evaluation", "Supervised fine-tuning", "Chat evaluation (SFT)", "Reinforcement learning", "Demo prompts"):
        assert f"## {title}" in text
    assert list((home / "checkpoints" / "sft" / "demo").glob("step_*/manifest.json"))
    rl = json.loads((home / "report" / "sections" / "rl.json").read_text())["data"]
    assert "demo-arith pass@1 before RL (held out)" in rl and "demo-arith pass@1 (held out)" in rl and rl["final_step"] == 2
    assert re.search(r"\d+ of 45 prompts pass \(\d+%\)", text)
    chat = run_cli("chat", "--source", "sft", "-p", "hi", "--max-tokens", "8", "--device", "cpu", env=env)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    # everything is recorded: a rerun runs nothing and only prints the summary
    again = run_cli("speedrun", "--tiny", "--device", "cpu", "--nproc", "1", env=env)
    assert again.returncode == 0 and "stage 1/" not in again.stdout and "done, skipped" in again.stdout
    assert report.read_text() == text


def _md_rows(md: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under `## heading`, by first cell."""
    body = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows[1:]}


def _stage_outputs(out: str) -> dict[str, str]:
    parts = re.split(r"^─+ stage \d+/\d+: (\S+) — .*$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_card_adds_up_to_what_the_stages_printed_and_recorded(tiny_run):
    """Every number on the card against the stages' own output and metrics files, parsed here."""
    from nanochat.train.loop import read_metrics

    home, out, wall = tiny_run
    md = (home / "report" / "report.md").read_text()
    summary = _md_rows(md, "Summary")
    stage_out = _stage_outputs(out)
    assert list(stage_out) == DEMO_STAGES

    # pretraining: its metrics file and its own lines; the base eval of its last checkpoint: the same number
    evals = [r for r in read_metrics(home / "checkpoints" / "base" / "demo" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40] and {e["tokens"] for e in evals} == {512}  # --eval-every 20 --eval-tokens 512
    final = f"{evals[-1]['val_bpb']:.4f}"
    lowest = min(evals, key=lambda e: e["val_bpb"])
    assert f"step 00040 | val bpb {final} on 512 tokens" in stage_out["pretrain"]
    printed_bpb = re.search(r"^│ bpb\s+│ val bpb\s+│\s+(\S+) │\s+([\d,]+) tokens │", stage_out["base-eval"], re.M)
    assert printed_bpb.groups() == (final, "512")
    # the base and sft columns of the summary (the rl column comes third)
    assert summary["val bpb on 512 tokens"][:2] == [final, "-"]
    pre = _md_rows(md, "Base model training")
    assert pre["end-of-training val bpb on 512 tokens"] == [final, "40", "corpus:demo (val split)"]
    assert pre["lowest val bpb during training on 512 tokens"] == [f"{lowest['val_bpb']:.4f}", str(lowest["step"]), "corpus:demo (val split)"]
    assert _md_rows(md, "Base model evaluation")["val bpb on 512 tokens"][:2] == [final, "40"]
    # CORE: 19 offline tasks x --max-per-task 2
    core = re.search(r"^│ core\s+│ CORE-offline[^│]*│\s+(\S+) │\s+([\d,]+) examples │", stage_out["base-eval"], re.M)
    assert core.group(2) == "38" and summary["CORE-offline (19 tasks, squad 1k, coqa 4.9k) on 38 examples"][:2] == [core.group(1), "-"]

    # SFT's chat val bpb: its metrics file and its closing line
    sft_evals = [r for r in read_metrics(home / "checkpoints" / "sft" / "demo" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [e["step"] for e in sft_evals] == [0, 5, 10]
    chat_bpb, n = f"{sft_evals[-1]['val_bpb']:.4f}", sft_evals[-1]["tokens"]
    assert f"done: 10 steps, chat val bpb {chat_bpb} on {n:,} assistant tokens" in stage_out["sft"]
    assert summary[f"chat val bpb on {n:,} assistant tokens"][:2] == ["-", chat_bpb]

    # the chat tasks as the chat-eval stage printed them (--max-per-task 2), and ChatCORE over the two by hand
    accs = {}
    for task, metric in (("arc-easy", "accuracy"), ("spellingbee", "pass@1")):
        m = re.search(rf"^│ {task}\s+│ {re.escape(metric)}\s+│\s+(\S+) │\s+2 questions │", stage_out["chat-eval"], re.M)
        accs[task] = m.group(1)
    assert summary["ARC-Easy accuracy on 2 questions"][:2] == ["-", accs["arc-easy"]]
    assert summary["SpellingBee pass@1 on 2 questions"][:2] == ["-", accs["spellingbee"]]
    by_hand = ((float(accs["arc-easy"]) - 0.25) / 0.75 + float(accs["spellingbee"])) / 2
    assert float(summary["ChatCORE (partial: 2 of 6 tasks)"][1]) == pytest.approx(by_hand, abs=1e-4)
    assert "chat-eval — chat tasks and ChatCORE (partial: 2 of 6 tasks)" in out
    # RL's held-out pass@1 before and after, as its closing line printed them (the RL column)
    before, after = re.search(r"pass@1 (\S+) before RL, (\S+) after", stage_out["rl"]).groups()
    rl_rows = ["DemoArith held-out pass@1 (T=1, 2 samples each) before RL on 2 problems", "DemoArith held-out pass@1 (T=1, 2 samples each) after RL on 2 problems"]
    assert [summary[r] for r in rl_rows] == [["-", "-", before], ["-", "-", after]]
    assert set(summary) == {"CORE-offline (19 tasks, squad 1k, coqa 4.9k) on 38 examples", "val bpb on 512 tokens",
                            f"chat val bpb on {n:,} assistant tokens", "ARC-Easy accuracy on 2 questions",
                            "SpellingBee pass@1 on 2 questions", "ChatCORE (partial: 2 of 6 tasks)", *rl_rows}  # fmt: skip

    # timings: every stage, the tokenizer and the report itself included, as the run printed them; the total is their sum
    timings = _md_rows(md, "Timings")
    printed = dict(re.findall(r"^stage (\S+) took (.+)$", out, re.M))
    assert list(printed) == DEMO_STAGES
    assert [k for k in timings if k != "**Total**"] == DEMO_STAGES
    assert {k: v[0] for k, v in timings.items() if k != "**Total**"} == printed
    total = re.search(r"^speedrun done: all stages took (.+); the report card", out, re.M).group(1)
    assert timings["**Total**"] == [f"**{total}**"]
    seconds = [float(re.search(r"\(([\d.]+) s\)", v).group(1)) for v in printed.values()]
    card_total = float(re.search(r"\(([\d.]+) s\)", total).group(1))
    assert card_total == pytest.approx(sum(seconds), abs=0.05 * len(seconds))
    state = json.loads((home / "speedrun" / "state.json").read_text())
    assert card_total == pytest.approx(sum(r["seconds"] for r in state["stages"].values()), abs=0.05)
    # the stages ran inside the run this test timed, so their sum cannot exceed it
    assert card_total <= wall


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
