"""GSM8K: answer extraction on real problems, the calculator tool-call conversion, offline splits."""

from __future__ import annotations

import json

import pytest

from nanochat.common.errors import NanochatError
from nanochat.tasks.gsm8k import GSM8K, extract_answer, solution_parts

# The final answers of the first 50 problems of the GSM8K test split, read off their `#### N` lines.
FIRST_50 = [
    "18", "3", "70000", "540", "20", "64", "260", "160", "45", "460", "366", "694", "13", "18", "60", "125", "230",
    "57500", "7", "6", "15", "14", "7", "8", "26", "2", "243", "16", "25", "104", "109", "80", "35", "70", "23", "9",
    "75", "2", "10", "18", "8", "200", "26", "48", "20", "104", "163", "800", "8", "30",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")


def _rows():
    from nanochat.data.resources import open_resource

    with open_resource("tasks/gsm8k_test.jsonl") as f:
        return [json.loads(line) for line in f]


def test_extraction_matches_reference_answers_on_50_real_problems():
    rows = _rows()[:50]
    assert [extract_answer(r["answer"]) for r in rows] == FIRST_50
    task = GSM8K(split="test")
    by_question = {ex["messages"][0]["content"]: ex for ex in task}
    for r, answer in zip(rows, FIRST_50):
        ex = by_question[r["question"]]
        assert task.evaluate(ex, f"The answer is:\n#### {answer}")
        assert task.evaluate(ex, f"#### {int(answer):,}")  # commas are ignored
        assert not task.evaluate(ex, f"#### {int(answer) + 1}")
        assert not task.evaluate(ex, answer)  # no #### line: no answer
        assert task.reward(ex, f"#### {answer}") == 1.0 and task.reward(ex, "#### -1") == 0.0


def test_extract_answer_edge_cases():
    assert extract_answer("#### 1,450,000") == "1450000"
    assert extract_answer("so #### -3.5 dollars") == "-3.5"
    assert extract_answer("no answer here") is None
    assert extract_answer("#### 4\n#### 5") == "4"  # the first one counts


def test_calculator_annotations_become_tool_calls():
    answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    assert solution_parts(answer) == [
        {"type": "text", "text": "Janet sells 16 - 3 - 4 = "},
        {"type": "python", "text": "16-3-4"},
        {"type": "python_output", "text": "9"},
        {"type": "text", "text": "9 duck eggs a day.\nShe makes 9 * 2 = $"},
        {"type": "python", "text": "9*2"},
        {"type": "python_output", "text": "18"},
        {"type": "text", "text": "18 every day.\n#### 18"},
    ]
    # every real solution: the text parts plus the tool calls spell out the original exactly
    for r in _rows():
        parts = solution_parts(r["answer"])
        rebuilt = "".join(f"<<{p['text']}=" if p["type"] == "python" else f"{p['text']}>>" if p["type"] == "python_output" else p["text"] for p in parts)
        assert rebuilt == r["answer"]
        assert parts[-1]["type"] == "text" and extract_answer(parts[-1]["text"]) is not None


def test_offline_train_split_is_labelled():
    with pytest.raises(NanochatError, match="train-from-test"):
        GSM8K(split="train")
    train, held = GSM8K(split="train-from-test"), GSM8K(split="test-heldout")
    assert len(train) == 1000 and len(held) == 319
    assert "TRAIN PARTITION MADE FROM THE TEST SPLIT" in train.data_source
    qs_train = {ex["messages"][0]["content"] for ex in train}
    qs_held = {ex["messages"][0]["content"] for ex in held}
    assert not qs_train & qs_held
    assert qs_train | qs_held == {r["question"] for r in _rows()}
