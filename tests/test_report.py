"""The report card: sections recorded by the stages become report.md with plots that open; every
number is named with its unit and sample count, timings add up, and charts keep one metric kind each."""

from __future__ import annotations

import json
import re

import pytest

from nanochat.eval import report as rpt
from tests.conftest import run_cli

M = rpt.metric


def _record_a_run():
    rpt.record_section("environment", {"gpu_count": 8, "gpu_name": "NVIDIA H100 80GB HBM3"})
    rpt.record_section("pretrain", {"depth": 4, "total_time_s": 3000.0}, series={"train_loss": [[0, 9.0], [10, 6.5], [20, 5.0]]})
    rpt.record_section("pretrain", {"results": {"val_bpb": M("end-of-training val bpb", 1.25, 8192, "tokens", step=20)}}, series={"val_bpb": [[0, 3.0], [20, 1.25]]})
    rpt.record_section("eval-base", {
        "results": {"core": M("CORE-offline (19 tasks, squad 1k, coqa 4.9k)", 0.1234, 38, "examples"), "val_bpb": M("val bpb", 1.2, 8192, "tokens", step=20)},
        "core_tasks": {"piqa": {"accuracy": 0.6, "centered": 0.2, "examples": 2}, "copa": {"accuracy": 0.55, "centered": 0.1, "examples": 2}},
    })  # fmt: skip
    rpt.record_section("sft", {"total_time_s": 600.0, "results": {"chat_val_bpb": M("chat val bpb", 1.5, 3210, "assistant tokens")}})
    rpt.record_section("tokenizer-eval", {"comparison": "| text | ratio |\n|---|---|\n| news | 4.5 |"})
    rpt.record_section("eval-sft", {"results": {
        "arc-easy": M("ARC-Easy", 0.5, 200, "questions", kind="accuracy", chance=0.25),
        "mmlu": M("MMLU", 0.3, 200, "questions", kind="accuracy", chance=0.25),
        "gsm8k": M("GSM8K", 0.05, 100, "problems", kind="pass@1"),
        "chatcore": M("ChatCORE (partial: 3 of 6 tasks)", 0.11),
    }})  # fmt: skip


def test_sections_merge_results_one_by_one_and_are_json(nanochat_home):
    _record_a_run()
    s = json.loads((nanochat_home / "report" / "sections" / "pretrain.json").read_text())
    assert s["data"]["depth"] == 4 and s["data"]["total_time_s"] == 3000.0
    assert s["data"]["results"]["val_bpb"]["value"] == 1.25 and s["data"]["results"]["val_bpb"]["count"] == 8192
    assert set(s["series"]) == {"train_loss", "val_bpb"} and s["title"] == "Base model training"
    rpt.record_section("pretrain", {"nan_is_null": float("nan"), "results": {"extra": M("x", 1.0)}})
    s = json.loads((nanochat_home / "report" / "sections" / "pretrain.json").read_text())
    assert s["data"]["nan_is_null"] is None and set(s["data"]["results"]) == {"val_bpb", "extra"}  # merged, not replaced
    assert list(rpt.load_sections()) == ["environment", "tokenizer-eval", "pretrain", "eval-base", "sft", "eval-sft"]


def test_only_rank_zero_records(nanochat_home, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert rpt.record_section("pretrain", {"x": 1}) is None
    assert not (nanochat_home / "report" / "sections").exists()


def test_bad_section_name_is_refused():
    from nanochat.common.errors import NanochatError

    with pytest.raises(NanochatError, match="section name"):
        rpt.record_section("../escape", {})


def test_metric_labels_carry_unit_and_count():
    assert rpt.metric_label(M("val bpb", 1.2, 8192, "tokens")) == "val bpb on 8,192 tokens"
    assert rpt.metric_label(M("ARC-Easy", 0.5, 200, "questions", kind="accuracy")) == "ARC-Easy accuracy on 200 questions"
    assert rpt.metric_label(M("ChatCORE (partial: 2 of 6 tasks)", 0.1)) == "ChatCORE (partial: 2 of 6 tasks)"
    assert rpt.metric_label(M("ARC-Easy", 0.5, 200, "questions", kind="accuracy"), count=False) == "ARC-Easy accuracy"


def test_report_md_summary_and_images_open(nanochat_home):
    from PIL import Image

    _record_a_run()
    out, images, plotted = rpt.generate_report()
    assert out == nanochat_home / "report" / "report.md" and plotted
    md = out.read_text()
    summary = md.split("## Summary")[1].split("## ")[0]
    # metric x stage, each row named with its unit and sample count; nothing invented for RL
    assert "| Metric | BASE | SFT |" in summary
    assert "| CORE-offline (19 tasks, squad 1k, coqa 4.9k) on 38 examples | 0.1234 | - |" in summary
    # one bpb per checkpoint: the eval's entry replaces the training loop's for the same key
    assert "| val bpb on 8,192 tokens | 1.2000 | - |" in summary and "1.2500" not in summary
    assert "| chat val bpb on 3,210 assistant tokens | - | 1.5000 |" in summary
    assert "| ARC-Easy accuracy on 200 questions | - | 0.5000 |" in summary and "| GSM8K pass@1 on 100 problems | - | 0.0500 |" in summary
    assert "| ChatCORE (partial: 3 of 6 tasks) | - | 0.1100 |" in summary
    assert "HumanEval" not in summary and summary.count("examples") == 1  # only CORE's count is in examples
    assert "not comparable with reference CORE" in md
    assert "**comparison**\n\n| text | ratio |\n|---|---|\n| news | 4.5 |" in md
    # the section's own table of results, with the step
    assert "| end-of-training val bpb on 8,192 tokens | 1.2500 | 20 | - |" in md.split("## Base model training")[1]
    assert "| piqa | 0.6000 | 0.2000 | 2 |" in md
    # without a speedrun, Timings are the stages' own clocks, summed and labelled as such: 3600 s on 8 H100s at $3/h = $24.00
    timings = md.split("## Timings")[1].split("## ")[0]
    assert "own clock" in timings and "| Base model training | 50m00s (3000.0 s) |" in timings
    assert "| **Sum** | **1h00m (3600.0 s)** |" in timings and "$24.00" in timings
    linked = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    # train_loss, val_bpb, the CORE tasks chart, and the SFT eval's accuracy and pass@1 charts apart
    assert sorted(linked) == ["plots/eval-base-core.png", "plots/eval-sft-accuracy.png", "plots/eval-sft-pass-1.png",
                              "plots/pretrain-train_loss.png", "plots/pretrain-val_bpb.png"]  # fmt: skip
    assert sorted(out.parent / p for p in linked) == sorted(images)
    for p in images:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_summary_cells_carry_their_count_when_stages_differ(nanochat_home):
    rpt.record_section("eval-sft", {"results": {"arc-easy": M("ARC-Easy", 0.5, 200, "questions", kind="accuracy"),
                                                "chatcore": M("ChatCORE (partial: 5 of 6 tasks)", 0.2)}})  # fmt: skip
    rpt.record_section("eval-rl", {"results": {"arc-easy": M("ARC-Easy", 0.6, 100, "questions", kind="accuracy"),
                                               "chatcore": M("ChatCORE (partial: 4 of 6 tasks)", 0.3)}})  # fmt: skip
    headers, rows = rpt.summary_table(rpt.load_sections())
    assert headers == ["Metric", "SFT", "RL"]
    assert rows == [["ARC-Easy accuracy", "0.5000 (on 200 questions)", "0.6000 (on 100 questions)"],
                    ["ChatCORE", "0.2000 (partial: 5 of 6 tasks)", "0.3000 (partial: 4 of 6 tasks)"]]  # fmt: skip


def test_speedrun_timings_are_the_stage_wall_times_and_their_sum(nanochat_home):
    rpt.record_section("pretrain", {"total_time_s": 100.0})  # a stage's own clock: not what a speedrun card totals
    stages = [["tokenizer", 3.25], ["pretrain", 120.5], ["base-eval", 30.0], ["report", 2.0]]
    rpt.record_section("speedrun", {"stages": stages, "total_s": 155.75})
    md = rpt.generate_report()[0].read_text()
    timings = md.split("## Timings")[1].split("## ")[0]
    rows = re.findall(r"^\| (\S+) \| (.+) \|$", timings, re.M)
    assert rows[1:] == [("tokenizer", "3s (3.2 s)"), ("pretrain", "2m00s (120.5 s)"), ("base-eval", "30s (30.0 s)"),
                        ("report", "2s (2.0 s)"), ("**Total**", "**2m36s (155.8 s)**")]  # fmt: skip
    assert "measured by `nanochat speedrun`" in timings
    assert "## Timings" not in md.split("## Timings")[1]  # the speedrun section is not shown a second time


def test_bar_charts_one_metric_kind_each_with_axes_and_chance_lines(nanochat_home):
    plt = rpt._matplotlib()
    _record_a_run()
    sections = rpt.load_sections()
    charts = {c["slug"]: c for c in rpt.bar_charts(sections["eval-sft"])}
    assert set(charts) == {"accuracy", "pass-1"}  # ChatCORE (a composite) is no bar
    assert charts["accuracy"]["bars"] == {"ARC-Easy": 0.5, "MMLU": 0.3} and charts["accuracy"]["chance"] == {"ARC-Easy": 0.25, "MMLU": 0.25}
    assert charts["accuracy"]["ylabel"] == "accuracy on 200 questions each"
    assert charts["pass-1"]["bars"] == {"GSM8K": 0.05} and charts["pass-1"]["chance"] == {}
    base = rpt.bar_charts(sections["eval-base"])
    assert [c["slug"] for c in base] == ["core"]  # bpb never shares a chart with accuracies
    assert base[0]["bars"] == {"piqa": 0.2, "copa": 0.1} and base[0]["ylabel"] == "centered accuracy on 2 examples each"

    fig, ax = rpt.bar_figure(plt, charts["accuracy"])
    assert ax.get_xlabel() == "task" and ax.get_ylabel() == "accuracy on 200 questions each"
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {0.25}
    assert [round(p.get_height(), 4) for p in ax.patches] == [0.5, 0.3]
    plt.close(fig)
    fig, ax = rpt.bar_figure(plt, charts["pass-1"])
    assert not [line for line in ax.get_lines() if line.get_label().startswith("chance")]  # no chance level for generation
    plt.close(fig)
    fig, ax = rpt.series_figure(plt, sections["pretrain"], "train_loss")
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "train loss (nats per token)"
    plt.close(fig)


def test_text_only_rewrite_links_the_plots_already_drawn(nanochat_home, monkeypatch):
    _record_a_run()
    out, images, _ = rpt.generate_report()
    before = {p: p.stat().st_mtime_ns for p in images}
    monkeypatch.setattr(rpt, "_matplotlib", lambda: pytest.fail("draw=False must not draw"))
    rpt.record_section("speedrun", {"stages": [["report", 1.5]], "total_s": 1.5})
    out2, images2, _ = rpt.generate_report(draw=False)
    assert sorted(images2) == sorted(images) and {p: p.stat().st_mtime_ns for p in images2} == before
    md = out2.read_text()
    assert "| report | 2s (1.5 s) |" in md and len(re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)) == len(images)


def test_without_matplotlib_plots_are_skipped(nanochat_home, monkeypatch):
    monkeypatch.setattr(rpt, "_matplotlib", lambda: None)
    _record_a_run()
    out, images, plotted = rpt.generate_report()
    assert images == [] and not plotted
    assert "Plots skipped: matplotlib is not installed" in out.read_text()


def test_report_command(nanochat_home):
    r = run_cli("report")
    assert r.returncode == 1 and "nothing recorded yet" in r.stderr
    _record_a_run()
    r = run_cli("report")
    assert r.returncode == 0, r.stderr
    assert "report written to" in r.stdout and (nanochat_home / "report" / "report.md").is_file()


def test_number_and_duration_formats():
    assert [rpt.fmt(v) for v in (0.12345, 12345.6, 3637320.0, 12345, 42, None, True)] == ["0.1235", "12,346", "3.637e+06", "12,345", "42", "-", "True"]
    assert [rpt.fmt_duration(s) for s in (4.2, 185, 3600, 7620)] == ["4s", "3m05s", "1h00m", "2h07m"]
    assert rpt.fmt_seconds(185.24) == "3m05s (185.2 s)"
