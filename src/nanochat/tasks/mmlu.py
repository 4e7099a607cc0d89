"""MMLU (`cais/mmlu`): 57-subject multiple choice, four options, scored by the answer letter.

Splits: `test` (14,042, evaluation), `validation`, `dev`, and `auxiliary_train` (online only).
Offline the packaged `tasks/mmlu_{dev,validation,test}.jsonl` are used. Rows are shuffled with
seed 42, as the reference does.
"""

from __future__ import annotations

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, RowTask, load_rows, render_mc

LETTERS = ("A", "B", "C", "D")
SPLITS = ("auxiliary_train", "dev", "validation", "test")


def _from_hub(row: dict) -> dict:
    if isinstance(row.get("train"), dict):  # auxiliary_train rows nest the record under "train"
        row = row["train"]
    return {"question": row["question"], "subject": row.get("subject", ""), "choices": list(row["choices"]), "answer": int(row["answer"])}


class MMLU(RowTask):
    name = "MMLU"
    eval_type = "categorical"
    random_baseline = 0.25

    def __init__(self, subset: str = "all", split: str = "test", source: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise NanochatError(f"MMLU has no split {split!r}; use one of {', '.join(SPLITS)}")
        packaged = None if split == "auxiliary_train" else f"tasks/mmlu_{split}.jsonl"
        if subset != "all":
            packaged = None
        loaded = load_rows(("cais/mmlu", subset, split), packaged, from_hub=_from_hub, source=source, what=f"MMLU {split}")
        self._use_rows(loaded, split)

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        if len(row["choices"]) != 4:
            raise NanochatError(f"MMLU row {index} has {len(row['choices'])} choices, not 4; the data is damaged")
        answer = LETTERS[row["answer"]]
        return {
            "messages": [
                {"role": "user", "content": render_mc(row["question"], LETTERS, row["choices"])},
                {"role": "assistant", "content": answer},
            ],
            "subject": row["subject"],
            "letters": LETTERS,
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]
