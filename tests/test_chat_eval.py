"""Chat evals with rigged models: MMLU by letter logits, generative pass@k, ChatCORE."""

from __future__ import annotations

import json

import pytest
import torch

from nanochat.eval.chat_eval import chatcore, chatcore_partial, run_categorical, run_generative


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer

    text = open_resource("corpus/austen/emma.txt").read()[:100_000]
    return Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)


class LetterPicker(torch.nn.Module):
    """Reads the question back from the prompt, looks its answer up in the raw MMLU file, and puts a
    high logit on that letter; or, with `rng`, random logits on the letters."""

    def __init__(self, tokenizer, raw_rows, rng=None):
        super().__init__()
        self.tok, self.rows, self.rng = tokenizer, raw_rows, rng

    def forward(self, idx):
        B, T = idx.shape
        V = self.tok.vocab_size
        logits = torch.zeros(B, T, V)
        if self.rng is not None:  # random preferences among the four letters
            letters = [self.tok.encode(c)[0] for c in "ABCD"]
            logits[:, :, letters] = torch.randn(B, T, 4, generator=self.rng)
            return logits
        for b in range(B):
            text = self.tok.decode(idx[b].tolist())
            row = next(r for r in self.rows if r["question"] in text and all(f"- {c}=" in text for c in r["choices"]))
            logits[b, :, self.tok.encode("ABCD"[row["answer"]])[0]] = 10.0
        return logits


def _raw(rel):
    from nanochat.data.resources import open_resource

    with open_resource(rel) as f:
        return [json.loads(line) for line in f]


def test_mmlu_rigged_model_is_perfect_and_random_is_near_chance(tokenizer):
    from nanochat.tasks.mmlu import MMLU

    task = MMLU(split="validation")
    raw = _raw("tasks/mmlu_validation.jsonl")
    ticks = []
    res = run_categorical(LetterPicker(tokenizer, raw), tokenizer, task[:20], "cpu", batch_size=8, on_item=lambda: ticks.append(1))
    assert (res.passed, res.total) == (20, 20) and res.accuracy == 1.0 and len(ticks) == 20
    rnd = run_categorical(LetterPicker(tokenizer, raw, torch.Generator().manual_seed(0)), tokenizer, task, "cpu", batch_size=64, max_problems=400)
    assert rnd.total == 400
    assert 0.18 <= rnd.accuracy <= 0.32  # 25% +- 3.2 standard deviations


class Scripted:
    """A generate() that answers each GSM8K problem from a script keyed by question."""

    def __init__(self, tokenizer, answers):
        self.tok, self.answers, self.calls = tokenizer, answers, []

    def __call__(self, prompts, num_samples):
        self.calls.append(len(prompts))
        return [self.one(p, num_samples) for p in prompts]

    def one(self, prompt_ids, num_samples):
        text = self.tok.decode(prompt_ids)
        for q, outs in self.answers.items():
            if q in text:
                return [self.tok.encode(o) for o in outs[:num_samples]]
        raise AssertionError("unknown prompt")


def test_generative_pass_at_k(tokenizer):
    from nanochat.tasks.gsm8k import GSM8K

    task = GSM8K(split="test")[:4]
    rows = {r["question"]: r["answer"].split("#### ")[-1] for r in _raw("tasks/gsm8k_test.jsonl")}
    qs = [ex["messages"][0]["content"] for ex in task]
    right = Scripted(tokenizer, {q: [f"#### {rows[q]}"] for q in qs})
    assert run_generative(right, tokenizer, task, "cpu").accuracy == 1.0
    # the right answer only as the second sample: fails pass@1, passes pass@2
    second = Scripted(tokenizer, {q: ["#### -999", f"#### {rows[q]}"] for q in qs})
    assert run_generative(second, tokenizer, task, "cpu", num_samples=1).accuracy == 0.0
    assert run_generative(second, tokenizer, task, "cpu", num_samples=2).accuracy == 1.0
    half = Scripted(tokenizer, {q: [f"#### {rows[q]}" if i % 2 else "#### -1"] for i, q in enumerate(qs)})
    res = run_generative(half, tokenizer, task, "cpu", max_problems=4, batch_size=3)
    assert (res.passed, res.total) == (2, 4) and half.calls == [3, 1]
    # a prompt that leaves no room to answer fails without being generated
    lengths = [len(tokenizer.render_for_completion(ex["messages"])) for ex in task]
    limit = sorted(lengths)[2]  # the two shortest fit
    res = run_generative(right, tokenizer, task, "cpu", batch_size=4, max_prompt_len=limit)
    assert (res.passed, res.total, res.too_long) == (2, 4, 2) and right.calls[-1] == 2


def test_chatcore_by_hand():
    acc = {"arc-easy": 0.5, "arc-challenge": 0.25, "mmlu": 0.25, "gsm8k": 0.1, "humaneval": 0.0, "spellingbee": 0.3}
    # ((0.5-0.25)/0.75 + 0 + 0 + 0.1 + 0 + 0.3) / 6
    assert chatcore(acc) == pytest.approx((1 / 3 + 0.1 + 0.3) / 6)
    del acc["humaneval"]
    assert chatcore(acc) is None
    assert chatcore_partial(acc) == pytest.approx((1 / 3 + 0.1 + 0.3) / 5)


def _row(task, value, n=20, metric="accuracy", unit="questions"):
    from nanochat.eval.suite import EvalRow

    return EvalRow(task, metric, value, n, "packaged", 0.1, unit=unit)


def test_chatcore_is_computed_whenever_its_tasks_ran_and_labelled_partial():
    from nanochat.eval.suite import chatcore_row

    # two of the six: arc-easy at 0.4 is (0.4 - 0.25) / 0.75 = 0.2 above chance, spellingbee 0.1 (chance 0)
    cc = chatcore_row([_row("arc-easy", 0.4), _row("spellingbee", 0.1, metric="pass@1"), _row("bpb", 1.9, 8192, "val bpb", "tokens")])
    assert cc.metric == "ChatCORE (partial: 2 of 6 tasks)" and cc.value == pytest.approx((0.2 + 0.1) / 2)
    assert cc.on == "2 tasks" and "missing arc-challenge, mmlu, gsm8k, humaneval" in cc.source
    full = chatcore_row([_row(t, 0.25 if t in ("arc-easy", "arc-challenge", "mmlu") else 0.5) for t in ("arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval", "spellingbee")])
    assert full.metric == "ChatCORE" and full.value == pytest.approx(3 * 0.5 / 6) and full.on == "6 tasks"
    # a task without a value (no problems) is not counted as run; none at all: no ChatCORE
    assert chatcore_row([_row("mmlu", 0.5), _row("gsm8k", float("nan"))]).metric == "ChatCORE (partial: 1 of 6 tasks)"
    assert chatcore_row([_row("bpb", 1.9, 8192, "val bpb", "tokens")]) is None


def test_eval_results_are_named_with_unit_and_count():
    from nanochat.eval.report import metric_label
    from nanochat.eval.suite import EvalRow, chatcore_row, report_data

    rows = [EvalRow("bpb", "val bpb", 1.9, 8192, "corpus:demo (val split)", 1.0, {"val_bpb": 1.9, "train_bpb": 1.7, "val_tokens": 8192, "train_tokens": 8192}, unit="tokens"),
            _row("arc-easy", 0.5, 200), _row("gsm8k", 0.05, 100, "pass@1", "problems")]  # fmt: skip
    rows.append(chatcore_row(rows))
    assert [r.on for r in rows] == ["8,192 tokens", "200 questions", "100 problems", "2 tasks"]
    res = report_data(rows, step=70)["results"]
    assert {k: metric_label(m) for k, m in res.items()} == {
        "val_bpb": "val bpb on 8,192 tokens", "train_bpb": "train bpb on 8,192 tokens", "arc-easy": "ARC-Easy accuracy on 200 questions",
        "gsm8k": "GSM8K pass@1 on 100 problems", "chatcore": "ChatCORE (partial: 2 of 6 tasks)"}  # fmt: skip
    assert res["arc-easy"]["chance"] == 0.25 and res["gsm8k"]["chance"] is None  # 1 in 4 letters; no guessing a number
    assert res["val_bpb"]["value"] == 1.9 and res["train_bpb"]["value"] == 1.7 and not res["train_bpb"]["summary"]
    assert all(m["step"] == 70 for m in res.values())


def test_multi_token_letters_are_refused(tokenizer):
    from nanochat.common.errors import NanochatError
    from nanochat.eval.chat_eval import letter_token_ids

    assert letter_token_ids(tokenizer, "AB") == [tokenizer.encode("A")[0], tokenizer.encode("B")[0]]
    with pytest.raises(NanochatError, match="single-token"):
        letter_token_ids(tokenizer, ["Answer A"])


def test_evaluate_chatcore_on_a_tiny_model(tokenizer):
    """The training-time ChatCORE: every task runs (the generative ones through the Engine)."""
    pytest.importorskip("nanochat.engine.engine")
    from nanochat.eval.chat_eval import evaluate_chatcore
    from nanochat.model.config import GPTConfig
    from nanochat.model.gpt import build_model

    model = build_model(GPTConfig.from_depth(1, vocab_size=tokenizer.vocab_size, sequence_len=1024), "cpu", seed=0).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = evaluate_chatcore(model, tokenizer, "cpu", categorical_max=8, generative_max=2, max_new_tokens=4, tasks=("arc-easy", "mmlu", "spellingbee"))
    finally:
        torch.set_num_threads(threads)
    assert set(got) == {"arc-easy", "mmlu", "spellingbee", "chatcore_cat"}  # not all six: no chatcore
    assert got["chatcore_cat"] == pytest.approx(((got["arc-easy"] - 0.25) / 0.75 + (got["mmlu"] - 0.25) / 0.75) / 2)
    assert all(0.0 <= got[k] <= 1.0 for k in ("arc-easy", "mmlu", "spellingbee"))
