"""ARC (`allenai/ai2_arc`, subsets ARC-Easy and ARC-Challenge): grade-school science, 3-5 options.

The options are shown with the data set's own labels (A-E, sometimes 1-4) and the model answers
with the label. Offline the packaged `tasks/arc_{easy,challenge}_{validation,test}.jsonl` are used
(no train split offline). Rows are shuffled with seed 42.
"""

from __future__ import annotations

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, RowTask, load_rows, render_mc

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}


def _from_hub(row: dict) -> dict:
    return {
        "id": row.get("id", ""),
        "question": row["question"],
        "choices": list(row["choices"]["text"]),
        "labels": list(row["choices"]["label"]),
        "answer": row["answerKey"],
    }


class ARC(RowTask):
    eval_type = "categorical"
    random_baseline = 0.25

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", source: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise NanochatError(f"ARC has no subset {subset!r}; use ARC-Easy or ARC-Challenge")
        if split not in ("train", "validation", "test"):
            raise NanochatError(f"ARC has no split {split!r}; use train, validation or test")
        self.name = subset
        packaged = None if split == "train" else f"tasks/{SUBSETS[subset]}_{split}.jsonl"
        loaded = load_rows(("allenai/ai2_arc", subset, split), packaged, from_hub=_from_hub, source=source, what=f"{subset} {split}")
        self._use_rows(loaded, split)

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        if row["answer"] not in row["labels"]:
            raise NanochatError(f"{self.name} row {row.get('id', index)}: answer {row['answer']!r} is not one of its labels; the data is damaged")
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], row["labels"], row["choices"])},
                {"role": "assistant", "content": row["answer"]},
            ],
            "letters": tuple(row["labels"]),
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]
