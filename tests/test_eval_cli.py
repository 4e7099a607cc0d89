"""`nanochat eval` end to end on a tiny CPU checkpoint, against the offline CORE bundle."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tests.conftest import run_cli

# one torch thread: on a loaded 2-core machine two threads spin against each other (25x slower)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture
def tiny_checkpoint(nanochat_home):
    """A depth-1 model with a 512-token tokenizer, saved the way training saves checkpoints."""
    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    text = open_resource("corpus/austen/emma.txt").read()[:100_000]
    tok = Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)
    tok.save(paths.tokenizer_dir())
    config = GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=128)
    model = build_model(config, "cpu", seed=0)
    save_checkpoint(paths.checkpoints_dir("base") / "d1", 7, model_state=model.state_dict(), meta={"model_config": asdict(config), "data": "demo"})
    return nanochat_home


def test_eval_core_and_bpb_on_the_offline_bundle(tiny_checkpoint, tmp_path):
    out = tmp_path / "results.json"
    r = run_cli("eval", "--source", "base", "--tasks", "core,bpb", "--max-per-task", "20", "--bpb-tokens", "2600", "--device", "cpu", "--json", str(out), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "CORE-offline (19 tasks, squad 1k, coqa 4.9k)" in r.stdout
    assert "corpus:demo" in r.stdout and "loaded base/d1 step 7" in r.stdout
    res = json.loads(out.read_text())
    assert res["source"] == "base" and res["checkpoint"]["step"] == 7
    core = res["results"]["core"]
    assert core["label"].startswith("CORE-offline") and len(core["tasks"]) == 19
    assert set(core["missing"]) == {"jeopardy", "winograd", "agi_eval_lsat_ar"}
    for label, t in core["tasks"].items():
        assert t["examples"] == 20, label
        assert 0.0 <= t["accuracy"] <= 1.0
        b = t["baseline_percent"] / 100
        assert t["centered"] == pytest.approx((t["accuracy"] - b) / (1 - b))
    assert core["value"] == pytest.approx(sum(t["centered"] for t in core["tasks"].values()) / 19)
    bpb = res["results"]["bpb"]
    # an untrained model over 512 tokens: about log2(512) = 9 bits per token, tokens of a few bytes each
    assert 1.0 < bpb["val_bpb"] < 9.5 and 1.0 < bpb["train_bpb"] < 9.5
    assert bpb["data_source"] == "corpus:demo (val split)"
    # 2,600 tokens are 20 whole rows of the model's 128: 2,560 targets per split, so named in the table
    assert bpb["count"] == 2560 and bpb["unit"] == "tokens" and bpb["val_tokens"] == bpb["train_tokens"] == 2560
    assert "2,560 tokens" in r.stdout and core["count"] == 19 * 20 and core["unit"] == "examples"
    # the eval recorded its report section: each number with its unit and count
    section = json.loads((tiny_checkpoint / "report" / "sections" / "eval-base.json").read_text())
    results = section["data"]["results"]
    assert results["core"]["value"] == pytest.approx(core["value"]) and results["core"]["count"] == 380
    assert results["val_bpb"]["value"] == pytest.approx(bpb["val_bpb"]) and (results["val_bpb"]["count"], results["val_bpb"]["unit"]) == (2560, "tokens")
    assert results["train_bpb"]["value"] == pytest.approx(bpb["train_bpb"]) and section["data"]["step"] == 7


def test_eval_chat_task_and_errors(tiny_checkpoint):
    r = run_cli("eval", "--source", "base", "--tasks", "mmlu,arc-easy", "--max-per-task", "8", "--device", "cpu", "--offline", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "packaged:tasks/mmlu_test.jsonl" in r.stdout and "arc_easy_test" in r.stdout
    r = run_cli("eval", "--source", "base", "--tasks", "core,nope", "--device", "cpu")
    assert r.returncode == 2 and "unknown eval task(s) nope" in r.stderr and "Traceback" not in r.stderr  # a name outside the task list is bad usage
    r = run_cli("eval", "--source", "sft", "--tasks", "mmlu", "--device", "cpu")
    assert r.returncode == 1 and "sft" in r.stderr and "Traceback" not in r.stderr


def test_prepare_evals_offline(nanochat_home):
    r = run_cli("data", "prepare-evals", "--offline")
    assert r.returncode == 0, r.stderr
    assert "CORE-offline (19 tasks, squad 1k, coqa 4.9k)" in r.stdout and "jeopardy" in r.stdout
    assert (nanochat_home / "eval" / "eval_bundle_offline" / "core.yaml").is_file()
    bundle = json.loads((nanochat_home / "eval" / "eval_bundle_offline" / "bundle.json").read_text())
    assert bundle["offline"] is True and bundle["tasks"] == 19


def test_eval_generative_tasks_through_the_engine(nanochat_home, tmp_path):
    """sft checkpoint, the generative tasks and ChatCORE (needs the Engine and the sandbox)."""
    pytest.importorskip("nanochat.engine.engine")
    pytest.importorskip("nanochat.common.sandbox")
    from nanochat.common import paths
    from nanochat.common.checkpoint import save_checkpoint
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    text = open_resource("corpus/austen/emma.txt").read()[:100_000]
    tok = Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)
    tok.save(paths.tokenizer_dir())
    config = GPTConfig.from_depth(1, vocab_size=tok.vocab_size, sequence_len=1024)
    save_checkpoint(paths.checkpoints_dir("sft") / "d1", 1, model_state=build_model(config, "cpu", seed=0).state_dict(), meta={"model_config": asdict(config)})
    out = tmp_path / "r.json"
    r = run_cli("eval", "--source", "sft", "--max-per-task", "2", "--max-new-tokens", "4", "--device", "cpu", "--offline", "--json", str(out), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval", "spellingbee", "demo-arith", "chatcore"}
    for name in ("gsm8k", "humaneval", "spellingbee", "demo-arith"):
        assert res[name]["metric"] == "pass@1" and res[name]["count"] == 2
    accs = {k: v["value"] for k, v in res.items() if k not in ("chatcore", "demo-arith")}  # DemoArith is not in ChatCORE
    base = {"arc-easy": 0.25, "arc-challenge": 0.25, "mmlu": 0.25}
    assert res["chatcore"]["value"] == pytest.approx(sum((a - base.get(k, 0.0)) / (1 - base.get(k, 0.0)) for k, a in accs.items()) / 6)
    assert res["chatcore"]["metric"] == "ChatCORE" and (res["chatcore"]["count"], res["chatcore"]["unit"]) == (6, "tasks")
    assert res["mmlu"]["unit"] == "questions" and res["gsm8k"]["unit"] == "problems"
