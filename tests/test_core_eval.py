"""CORE: a hand-made bundle of all three task types, scored by rigged models with known answers."""

from __future__ import annotations

import json
import random

import pytest

from nanochat.eval.core import CoreBundle, centered, evaluate_core, fewshot_for, find_bundle, packaged_bundle
from tests._rigged import Oracle

MC = [
    {"query": "Question: What color is the clear daytime sky?", "choices": ["green", "blue", "red"], "gold": 1},
    {"query": "Question: How many legs does a dog have?", "choices": ["four", "two", "six"], "gold": 0},
]
SCHEMA = [
    {"context_options": ["The cat slept on the mat because the cat", "The cat slept on the mat because the mat"], "continuation": "was tired.", "gold": 0},
    {"context_options": ["Ann gave Bob a gift because Ann", "Ann gave Bob a gift because Bob"], "continuation": "had a birthday.", "gold": 1},
]
LM = [
    {"context": "The capital of France is ", "continuation": "Paris"},
    {"context": "Two plus two equals", "continuation": "four"},
]

# What each item's prompt must be, written out by hand (1-shot: the other item is the only choice).
RIGHT = {
    "mc": [
        "Question: How many legs does a dog have?\nAnswer: four\n\nQuestion: What color is the clear daytime sky?\nAnswer: blue",
        "Question: What color is the clear daytime sky?\nAnswer: blue\n\nQuestion: How many legs does a dog have?\nAnswer: four",
    ],
    "schema": ["The cat slept on the mat because the cat was tired.", "Ann gave Bob a gift because Bob had a birthday."],
    "lm": ["Two plus two equals four\n\nThe capital of France is Paris", "The capital of France is Paris\n\nTwo plus two equals four"],
}
WRONG = {
    "mc": [
        "Question: How many legs does a dog have?\nAnswer: four\n\nQuestion: What color is the clear daytime sky?\nAnswer: green",
        "Question: How many legs does a dog have?\nAnswer: four\n\nQuestion: What color is the clear daytime sky?\nAnswer: red",
        "Question: What color is the clear daytime sky?\nAnswer: blue\n\nQuestion: How many legs does a dog have?\nAnswer: two",
        "Question: What color is the clear daytime sky?\nAnswer: blue\n\nQuestion: How many legs does a dog have?\nAnswer: six",
    ],
    "schema": ["The cat slept on the mat because the mat was tired.", "Ann gave Bob a gift because Ann had a birthday."],
    "lm": ["Two plus two equals four\n\nThe capital of France is Lyon", "The capital of France is Paris\n\nTwo plus two equals five"],
}


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer

    text = open_resource("corpus/austen/emma.txt").read()[:100_000]
    return Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "bundle"
    (root / "eval_data" / "tiny").mkdir(parents=True)
    (root / "core.yaml").write_text(
        "icl_tasks:\n"
        "- {label: mc, dataset_uri: tiny/mc.jsonl, num_fewshot: [1], icl_task_type: multiple_choice, continuation_delimiter: \"\\nAnswer: \"}\n"
        "- {label: schema, dataset_uri: tiny/schema.jsonl, num_fewshot: [0], icl_task_type: schema}\n"
        "- {label: lm, dataset_uri: tiny/lm.jsonl, num_fewshot: [1], icl_task_type: language_modeling, continuation_delimiter: \" \"}\n"
    )
    (root / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,25\nschema,50\nlm,0\n")
    for name, rows in (("mc", MC), ("schema", SCHEMA), ("lm", LM)):
        (root / "eval_data" / "tiny" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return CoreBundle(root, "tiny", origin=str(root))


def oracle(tokenizer, texts):
    return Oracle([tokenizer.encode(t, prepend=tokenizer.bos_id) for t in texts], tokenizer.vocab_size)


def test_rigged_model_scores_centered_one_on_all_three_types(tokenizer, bundle):
    model = oracle(tokenizer, [t for v in RIGHT.values() for t in v])
    res = evaluate_core(model, tokenizer, bundle, "cpu")
    assert {k: v["accuracy"] for k, v in res.tasks.items()} == {"mc": 1.0, "schema": 1.0, "lm": 1.0}
    assert {k: v["centered"] for k, v in res.tasks.items()} == {"mc": 1.0, "schema": 1.0, "lm": 1.0}
    assert res.core == 1.0
    assert {k: v["type"] for k, v in res.tasks.items()} == {"mc": "multiple_choice", "schema": "schema", "lm": "language_modeling"}


def test_model_rigged_for_wrong_answers_scores_below_chance(tokenizer, bundle):
    model = oracle(tokenizer, [t for v in WRONG.values() for t in v])
    res = evaluate_core(model, tokenizer, bundle, "cpu")
    assert {k: v["accuracy"] for k, v in res.tasks.items()} == {"mc": 0.0, "schema": 0.0, "lm": 0.0}
    # centered: (0 - 0.25) / 0.75, (0 - 0.5) / 0.5, 0
    assert res.tasks["mc"]["centered"] == pytest.approx(-1 / 3)
    assert res.tasks["schema"]["centered"] == pytest.approx(-1.0)
    assert res.core == pytest.approx((-1 / 3 - 1.0 + 0.0) / 3)


def test_language_modeling_needs_every_token(tokenizer, bundle):
    # knows the few-shot example but only "Par" of the answer: greedy decoding misses the rest
    partial = ["Two plus two equals four\n\nThe capital of France is Par"]
    res = evaluate_core(oracle(tokenizer, partial), tokenizer, bundle, "cpu")
    assert res.tasks["lm"]["accuracy"] == 0.0


def test_centered_and_fewshot_sampling():
    assert centered(0.625, 25) == pytest.approx(0.5)
    assert centered(0.5, 50) == 0.0 and centered(1.0, 9.1) == pytest.approx(1.0)
    data = [{"i": i} for i in range(30)]
    for idx in (0, 7, 29):
        shots = fewshot_for(data, idx, 10)
        assert len(shots) == 10 and {"i": idx} not in shots
        assert shots == [data[i] for i in random.Random(1234 + idx).sample([j for j in range(30) if j != idx], 10)]
    assert fewshot_for(data, 3, 0) == []
    assert len(fewshot_for(data[:4], 0, 10)) == 3  # fewer items than shots: all the others


def test_packaged_bundle_is_core_offline():
    b = packaged_bundle()
    specs = b.task_specs()
    assert len(specs) == 19 and b.offline
    assert b.label == "CORE-offline (19 tasks, squad 1k, coqa 4.9k)"
    assert set(b.missing_tasks()) == {"jeopardy", "winograd", "agi_eval_lsat_ar"}
    baselines = b.baselines()
    assert {s["label"] for s in specs} <= set(baselines)
    assert baselines["bigbench_language_identification"] == 9.1 and baselines["boolq"] == 62
    fields = {"multiple_choice": {"query", "choices", "gold"}, "schema": {"context_options", "continuation", "gold"}, "language_modeling": {"context", "continuation"}}
    for s in specs:
        with b.open(f"eval_data/{s['dataset_uri']}") as f:
            first = json.loads(f.readline())
        assert fields[s["task_type"]] <= set(first), s["label"]
    assert find_bundle().label == b.label  # nothing prepared: the packaged data is used


def test_prepared_offline_bundle_is_found(tokenizer):
    from nanochat.eval.core import prepare_offline_bundle

    path = prepare_offline_bundle()
    assert (path / "eval_data" / "language_understanding" / "hellaswag.jsonl").is_file()  # uncompressed, DCLM layout
    b = find_bundle()
    assert b.root == path and b.label.startswith("CORE-offline") and len(b.task_specs()) == 19


def test_results_are_all_reduced_over_ranks(tmp_path):
    """Two gloo ranks under torchrun each see the accuracy over all items (2 of 3; 3 of 4)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(root / "tests" / "_dist_eval_worker.py"), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert got["core"] == pytest.approx(2 / 3)
        assert (got["passed"], got["total"]) == (3, 4)


def test_batching_items_gives_the_same_answers(tokenizer):
    """Several items per forward (right-padded) score exactly as one item per forward."""
    import torch

    from nanochat.eval.core import evaluate_task
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine spin against each other
    try:
        _compare_batched(tokenizer, build_model, GPTConfig, evaluate_task)
    finally:
        torch.set_num_threads(threads)


def _compare_batched(tokenizer, build_model, GPTConfig, evaluate_task):
    model = build_model(GPTConfig.from_depth(1, vocab_size=tokenizer.vocab_size, sequence_len=128), "cpu", seed=0).eval()
    b = packaged_bundle()
    specs = {s["label"]: s for s in b.task_specs()}
    for label in ("hellaswag_zeroshot", "winogrande", "bigbench_operators"):
        spec = specs[label]
        data = b.load_data(spec["dataset_uri"])[:12]
        per_item, batched = [], []
        one = evaluate_task(model, tokenizer, data, spec, "cpu", lambda: per_item.append(1), batch_rows=1)
        many = evaluate_task(model, tokenizer, data, spec, "cpu", lambda: batched.append(1), batch_rows=16)
        assert one == many and len(per_item) == len(batched) == 12, label


@pytest.mark.gpu
def test_core_and_bpb_on_cuda(tokenizer):
    """On a GPU (bf16): batched CORE agrees with one item per forward, and bpb of a fresh model is sane."""
    import torch

    from nanochat.eval.bpb import evaluate_bpb, token_stream_batches
    from nanochat.eval.core import evaluate_task
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    model = build_model(GPTConfig.from_depth(4, vocab_size=tokenizer.vocab_size, sequence_len=512), "cuda", seed=0).eval()
    b = packaged_bundle()
    specs = {s["label"]: s for s in b.task_specs()}
    for label in ("hellaswag", "winogrande", "lambada_openai"):
        spec = specs[label]
        data = b.load_data(spec["dataset_uri"])[:40]
        one = evaluate_task(model, tokenizer, data, spec, "cuda", batch_rows=1)
        many = evaluate_task(model, tokenizer, data, spec, "cuda", batch_rows=32)
        assert abs(one - many) <= 2 / 40, label  # bf16 kernels may flip a near-tie or two
    from nanochat.data.resources import open_resource

    docs = iter([open_resource("corpus/austen/persuasion.txt").read()[:200_000]])
    bpb = evaluate_bpb(model, token_stream_batches(tokenizer, docs, 4, 512, "cuda"), 4, tokenizer.token_bytes())
    assert 1.0 < bpb < 12.0
    assert torch.cuda.max_memory_allocated() < 8 * 2**30
