"""GSM8K (`openai/gsm8k`): grade-school math word problems, answered with calculator tool calls.

The reference solution marks each calculation as `<<expr=result>>`; we turn those into a `python`
part (the expression) and a `python_output` part (its result), with the prose between them as
`text` parts, so the model learns to call the calculator. The final answer follows `#### `.

Splits: `train` (7,473, online only) and `test` (1,319, also packaged). Offline there is no train
split; `train-from-test` (1,000 test problems) and `test-heldout` (the other 319) partition the
test split for an offline demo, and say so in their `data_source`.
"""

from __future__ import annotations

import re

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, RowTask, load_rows, shuffled

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
CALC_RE = re.compile(r"(<<[^>]*>>)")
SPLITS = ("train", "test", "train-from-test", "test-heldout")
TRAIN_FROM_TEST = 1000


def extract_answer(text: str) -> str | None:
    """The number after the first `#### `, commas removed; None when there is none."""
    m = ANSWER_RE.search(text)
    if m is None:
        return None
    return m.group(1).strip().replace(",", "")


def solution_parts(answer: str) -> list[dict]:
    """A reference solution as assistant parts: `<<expr=result>>` becomes a python call and its output."""
    parts: list[dict] = []
    for piece in CALC_RE.split(answer):
        if not piece:
            continue
        if piece.startswith("<<") and piece.endswith(">>"):
            inner = piece[2:-2]
            expr, sep, result = inner.rpartition("=")
            if not sep:  # a malformed annotation: keep it as plain text rather than invent a call
                parts.append({"type": "text", "text": inner})
                continue
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        else:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(RowTask):
    name = "GSM8K"
    eval_type = "generative"
    random_baseline = 0.0

    def __init__(self, subset: str = "main", split: str = "test", source: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if subset not in ("main", "socratic"):
            raise NanochatError(f"GSM8K has no subset {subset!r}; use main or socratic")
        if split not in SPLITS:
            raise NanochatError(f"GSM8K has no split {split!r}; use one of {', '.join(SPLITS)}")
        hub_split = "train" if split == "train" else "test"
        packaged = "tasks/gsm8k_test.jsonl" if hub_split == "test" and subset == "main" else None
        what = f"GSM8K {split}"
        if split == "train" and packaged is None:
            what += " (not in the packaged data: offline, use split='train-from-test' and evaluate on 'test-heldout')"
        loaded = load_rows(("openai/gsm8k", subset, hub_split), packaged, source=source, what=what)
        rows = shuffled(loaded.rows, 42)
        self.data_source = loaded.source
        if split == "train-from-test":
            rows = rows[:TRAIN_FROM_TEST]
            self.data_source += f" [TRAIN PARTITION MADE FROM THE TEST SPLIT: {len(rows)} problems; evaluate on test-heldout only]"
        elif split == "test-heldout":
            rows = rows[TRAIN_FROM_TEST:]
            self.data_source += f" [held-out {len(rows)} test problems, disjoint from train-from-test]"
        self.rows = rows
        self.split = split

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": solution_parts(row["answer"])},
            ]
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        content = conversation["messages"][-1]["content"]
        last_text = content if isinstance(content, str) else [p for p in content if p["type"] == "text"][-1]["text"]
        ref = extract_answer(last_text)
        if ref is None:
            raise NanochatError("GSM8K reference answer has no '#### N' line; the data is damaged")
        return extract_answer(completion) == ref

    def reward(self, conversation: Conversation, completion: str) -> float:
        return float(self.evaluate(conversation, completion))
