"""The report card: sections recorded by the stages become report.md with plots that open."""

from __future__ import annotations

import json
import re

import pytest

from nanochat.eval import report as rpt
from tests.conftest import run_cli


def _record_a_run():
    rpt.record_section("environment", {"gpu_count": 8, "gpu_name": "NVIDIA H100 80GB HBM3"})
    rpt.record_section("pretrain", {"depth": 4, "total_time_s": 3000.0}, series={"train_loss": [[0, 9.0], [10, 6.5], [20, 5.0]]})
    rpt.record_section("pretrain", {"min_val_bpb": 1.25}, series={"val_bpb": [[0, 3.0], [20, 1.25]]})
    rpt.record_section("eval-base", {"core": 0.1234, "core_label": "CORE-offline (19 tasks, squad 1k, coqa 4.9k)", "val_bpb": 1.2, "core_tasks": {"piqa": 0.2, "copa": 0.1}})
    rpt.record_section("sft", {"total_time_s": 600.0})
    rpt.record_section("tokenizer-eval", {"comparison": "| text | ratio |\n|---|---|\n| news | 4.5 |"})
    rpt.record_section("eval-sft", {"arc-easy": 0.5, "mmlu": 0.3, "gsm8k": 0.05, "chatcore": 0.11})


def test_sections_merge_and_are_json(nanochat_home):
    _record_a_run()
    s = json.loads((nanochat_home / "report" / "sections" / "pretrain.json").read_text())
    assert s["data"] == {"depth": 4, "total_time_s": 3000.0, "min_val_bpb": 1.25}
    assert set(s["series"]) == {"train_loss", "val_bpb"} and s["title"] == "Base model training"
    rpt.record_section("pretrain", {"nan_is_null": float("nan")})
    assert json.loads((nanochat_home / "report" / "sections" / "pretrain.json").read_text())["data"]["nan_is_null"] is None
    assert list(rpt.load_sections()) == ["environment", "tokenizer-eval", "pretrain", "eval-base", "sft", "eval-sft"]


def test_only_rank_zero_records(nanochat_home, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert rpt.record_section("pretrain", {"x": 1}) is None
    assert not (nanochat_home / "report" / "sections").exists()


def test_bad_section_name_is_refused():
    from nanochat.common.errors import NanochatError

    with pytest.raises(NanochatError, match="section name"):
        rpt.record_section("../escape", {})


def test_report_md_summary_and_images_open(nanochat_home):
    from PIL import Image

    _record_a_run()
    out, images, plotted = rpt.generate_report()
    assert out == nanochat_home / "report" / "report.md" and plotted
    md = out.read_text()
    # the summary table: CORE and bpb for BASE, the chat tasks for SFT, nothing invented for RL
    assert "| Metric | BASE | SFT |" in md
    assert "| CORE | 0.1234 | - |" in md
    assert "| val bpb | 1.2000 | - |" in md
    assert "| ARC-Easy | - | 0.5000 |" in md and "| ChatCORE | - | 0.1100 |" in md
    assert "HumanEval" not in md.split("## Timings")[0]  # never measured: no row
    assert "not comparable with reference CORE" in md
    assert "**comparison**\n\n| text | ratio |\n|---|---|\n| news | 4.5 |" in md
    # timings and cost: 3600 s in all on 8 H100s at $3/h = $24.00
    assert "| Base model training | 50m00s |" in md and "| **Total** | **1h00m** |" in md and "$24.00" in md
    linked = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert len(linked) == 4  # train_loss, val_bpb, two eval bar charts
    assert sorted(out.parent / p for p in linked) == sorted(images)
    for p in images:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100


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
