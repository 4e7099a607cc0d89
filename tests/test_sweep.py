"""`nanochat sweep`: a two-budget, two-depth IsoFLOP sweep of tiny models on the demo data, stopped by
SIGTERM during its second run and continued by the same command (the finished run is skipped, the
stopped one resumes from its checkpoint); the val bpb in sweep.csv recomputed by hand from the saved
validation rows; the plan, the dry run and bad options."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.train_helpers import install_tokenizer

# depth 1-2, width 32-64, 64-token rows of 4 (256-token steps); pretrain options passed through the sweep
TINY = ["--aspect-ratio", "32", "--head-dim", "32", "--max-seq-len", "64", "--device-batch-size", "4", "--tokenizer-threads", "1",
        "--warmup-steps", "1", "--matrix-lr", "0.2", "--embedding-lr", "3", "--unembedding-lr", "0.08"]  # fmt: skip
# depth 2 first: the second run (depth 1, 1e9 FLOPs) is the longer one, stopped part-way
SWEEP = ["sweep", "isoflop", "--data", "demo", "--budgets", "1e9,2e9", "--depths", "2,1", "--device", "cpu", "--bpb-tokens", "2048",
         "--max-per-task", "1", "--measure-steps", "1", "--bootstrap", "20", *TINY]  # fmt: skip
TAGS = ["isoflop-d2-c1e9", "isoflop-d1-c1e9", "isoflop-d2-c2e9", "isoflop-d1-c2e9"]


def naive_bpb(tag: str, rows: np.ndarray) -> float:
    """Bits per byte of a checkpoint on the rows, the long way: full logits, log-softmax, bytes of each target token."""
    import torch

    from nanochat.engine.loading import load_model

    model, tok, _ = load_model("base", tag, device="cpu", quiet=True)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for row in rows:
            x = torch.tensor(row[:-1], dtype=torch.long)[None]
            logp = torch.log_softmax(model(x)[0].double(), dim=-1)
            for t, target in enumerate(row[1:].tolist()):
                b = 0 if tok.is_special(target) else len(tok.id_to_bytes(target))
                if b:
                    nats -= float(logp[t, target])
                    nbytes += b
    return nats / (math.log(2) * nbytes)


def test_isoflop_sweep_stops_and_continues(nanochat_home):
    install_tokenizer(nanochat_home)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "nanochat", *SWEEP], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out, in_run2, steps = [], False, 0
    for line in p.stdout:
        out.append(line)
        in_run2 = in_run2 or line.startswith("run 2/4") or "run 2/4:" in line
        if in_run2 and line.startswith("step 0"):
            steps += 1
            if steps == 3:
                p.send_signal(signal.SIGTERM)  # to the sweep: it passes it on to the running pretrain
                break
    rest, _ = p.communicate(timeout=300)
    first = "".join(out) + rest
    assert p.returncode == 1, first[-3000:]
    assert "stopped during run isoflop-d1-c1e9" in first and "SIGTERM: saved step" in first

    # the plan came first: four runs, each with a FLOP count within half a step of its budget and an estimate
    plan = {line.split()[1]: line.split() for line in first.splitlines() if line[:1].isdigit() and len(line.split()) > 10 and line.split()[1] in TAGS}
    assert list(plan) == TAGS
    for tag, cells in plan.items():
        budget = 1e9 if tag.endswith("c1e9") else 2e9
        fpt, steps_, batch, tokens, flops = float(cells[4]), int(cells[5].replace(",", "")), int(cells[6].replace(",", "")), int(cells[7].replace(",", "")), float(cells[9])
        assert batch == 256 and tokens == steps_ * batch and flops == pytest.approx(tokens * fpt, rel=1e-2)
        assert abs(tokens * fpt - budget) <= fpt * batch / 2 + 1
        assert cells[10] != "-"  # an estimated time from a measured step

    from nanochat.common.checkpoint import list_steps

    folder = nanochat_home / "sweeps" / "isoflop"
    done = folder / "runs" / f"{TAGS[0]}.json"
    assert done.is_file() and not (folder / "runs" / f"{TAGS[1]}.json").exists()
    stopped_at = max(list_steps("base", TAGS[1]))
    assert 3 <= stopped_at < int(plan[TAGS[1]][5])
    done_bytes, val_bytes = done.read_bytes(), (folder / "val_tokens.npy").read_bytes()

    r = run_cli(*SWEEP, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{TAGS[0]}: done, skipped" in r.stdout and f"--model-tag {TAGS[0]}" not in r.stdout
    assert f"resuming {TAGS[1]} from step {stopped_at}" in r.stdout
    assert done.read_bytes() == done_bytes and (folder / "val_tokens.npy").read_bytes() == val_bytes

    with open(folder / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["tag"] for row in rows) == sorted(TAGS)
    for row in rows:
        assert int(row["tokens"]) == int(row["iterations"]) * 256 == int(plan[row["tag"]][7].replace(",", ""))
        assert 0 < float(row["val_bpb"]) < 20 and row["core"] != "" and "CORE" in row["core_label"]
    # every run is scored on the same saved rows: the first of them are the start of the validation text
    val = np.load(folder / "val_tokens.npy")
    assert val.shape == (32, 65)
    from nanochat.data.corpus import open_corpus
    from nanochat.data.tokenizer import get_tokenizer

    first_doc = next(open_corpus("demo", "val").iter_docs(loop=False))[0]
    assert first_doc.encode().startswith(get_tokenizer().decode_bytes(val[0, 1:].tolist()))
    by_tag = {row["tag"]: row for row in rows}
    for tag in (TAGS[0], TAGS[2]):  # one scored by the first invocation, one by the second
        assert float(by_tag[tag]["val_bpb"]) == pytest.approx(naive_bpb(tag, val), rel=1e-4)

    for png in ("scaling.png", "isoflop.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 or more" in (folder / "fit.json").read_text()  # two sizes per budget: no parabola, and it says so
    sections = nanochat_home / "report" / "sections"
    assert not (sections / "pretrain.json").exists()  # the runs' own pretrain sections were put back (there was none)
    section = json.loads((sections / "sweep-isoflop.json").read_text())["data"]
    assert all(tag in section["runs_table"] for tag in TAGS)

    # the same sweep with another model shape is refused (its runs would not be comparable)
    wider = list(TINY)
    wider[TINY.index("--aspect-ratio") + 1] = "48"
    r = run_cli(*SWEEP[: -len(TINY)], *wider)
    assert r.returncode == 1 and "--aspect-ratio (32 then, 48 now)" in r.stderr and "--name" in r.stderr


def test_dry_run_prints_the_plan_and_trains_nothing(nanochat_home):
    install_tokenizer(nanochat_home)
    r = run_cli("sweep", "miniseries", "--data", "demo", "--depths", "1,2", "--ratio", "4", "--device", "cpu", "--measure-steps", "0", "--dry-run", *TINY)
    assert r.returncode == 0, r.stderr
    assert "miniseries-d1" in r.stdout and "miniseries-d2" in r.stdout and "dry run: nothing trained" in r.stdout
    assert "--target-param-data-ratio 4.0" in r.stdout and "--aspect-ratio 32" in r.stdout
    # ratio 4: tokens = 4 × scaling params, rounded down to whole 256-token steps (d1 has 28,684 scaling params)
    d1 = next(line.split() for line in r.stdout.splitlines() if line.split()[1:2] == ["miniseries-d1"])
    assert d1[3] == "28,684" and int(d1[7].replace(",", "")) == (4 * 28684 // 256) * 256
    assert not (nanochat_home / "checkpoints").exists() and not (nanochat_home / "sweeps").exists()


def test_bad_options_fail_in_one_line(nanochat_home):
    install_tokenizer(nanochat_home)
    base = ["sweep", "isoflop", "--data", "demo", "--device", "cpu", "--measure-steps", "0", "--dry-run"]
    for args, needle in (
        (["--budgets", "1e9", "--depths", "1", "--aspect-ration", "3"], r"No such option:? '?--aspect-ration'?\W+(Did you mean|Possible options:) '?--aspect-ratio"),  # click 8.1 / 8.2 wording
        (["--budgets", "1e9", "--depths", "1", "--depth", "3"], "use --depths"),
        (["--budgets", "1e3", "--depths", "1"], r"run isoflop-d1-c1e3: --target-flops 1e\+03 buys less than one step"),
    ):
        r = run_cli(*base, *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and re.search(needle, lines[0]), r.stderr


def test_spec_validation():
    from nanochat.common.errors import UsageError
    from nanochat.train.sweep import SweepSpec, budget_label, parse_list

    assert parse_list("4, 6,4,8", "depths", int) == (4, 6, 8) and parse_list("1e18,3e18", "budgets", float) == (1e18, 3e18)
    assert [budget_label(c) for c in (1e18, 3.5e17, 6e9, 2e20)] == ["1e18", "3.5e17", "6e9", "2e20"]
    for bad in ("2,x", "2.5"):
        with pytest.raises(UsageError, match="--depths"):
            parse_list(bad, "depths", int)
    ok = dict(kind="isoflop", depths=(2, 4), budgets=(1e18,))
    SweepSpec(**ok).validate()
    for change, needle in (
        ({"name": "Big Sweep"}, "--name"), ({"depths": (0, 2)}, "--depths"), ({"budgets": ()}, "--budgets"),
        ({"budgets": (-1.0,)}, "--budgets"), ({"kind": "grid"}, "miniseries or isoflop"), ({"max_per_task": -2}, "--max-per-task"),
        ({"explicit": frozenset({"resume"})}, "runs always resume"), ({"explicit": frozenset({"target_flops"})}, "--budgets"),
        ({"kind": "miniseries", "ratio": 0.0}, "--ratio"),
    ):  # fmt: skip
        with pytest.raises(UsageError, match=needle):
            SweepSpec(**{**ok, **change}).validate()


def test_isoflop_fit_goes_to_fit_json_plots_and_the_report(nanochat_home):
    # synthetic results of a 3-budget, 5-depth sweep whose losses are exact parabolas around N_opt = 0.1 C^0.45
    from nanochat.eval.report import load_sections
    from nanochat.train.sweep import SweepSpec, finish

    results = []
    for c in (1e15, 1e16, 1e17):
        for depth, u in zip((4, 6, 8, 10, 12), (-0.6, -0.3, 0.0, 0.3, 0.6)):
            n = 0.1 * c**0.45 * 10**u
            results.append({"tag": f"iso-d{depth}-c{c:g}", "budget": c, "depth": depth, "scaling_params": n, "tokens": c / (6 * n), "flops": c,
                            "val_bpb": 2.0 - 0.05 * math.log10(c) + 0.5 * u**2, "core": 0.01 * depth})  # fmt: skip
    spec = SweepSpec(kind="isoflop", depths=(4, 6, 8, 10, 12), budgets=(1e15, 1e16, 1e17), name="iso", data="demo", bootstrap=50)
    out = finish(spec, results)
    folder = nanochat_home / "sweeps" / "iso"
    fit = json.loads((folder / "fit.json").read_text())
    assert fit["a"] == pytest.approx(0.45, abs=1e-6) and fit["b"] == pytest.approx(0.55, abs=1e-6) and len(fit["optima"]) == 3
    assert any("a = 0.450" in line for line in out["lines"])
    for png in ("scaling.png", "isoflop.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = load_sections()["sweep-iso"]["data"]
    assert section["exponent_a"] == pytest.approx(0.45, abs=1e-6) and "D_opt ∝ C^b: b = 0.550" in section["fit"]
    assert all(r["tag"] in section["runs_table"] for r in results) and "../sweeps/iso/isoflop.png" in section["plots"]
    from nanochat.eval.scaling_plots import plot_scaling

    mini = [{"budget": None, "depth": d, "scaling_params": 1e6 * d, "flops": 1e15 * d, "val_bpb": 3 - 0.1 * d, "core": 0.02 * d} for d in (2, 4, 6)]
    assert plot_scaling(mini, nanochat_home / "mini.png", "miniseries").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
