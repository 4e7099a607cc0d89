"""HumanEval (`openai/openai_humaneval`): 164 Python functions to complete, checked by their tests.

The user message is the function's signature and docstring; the model's answer is code. Scoring
takes the first fenced code block of the completion (or the whole completion), puts the prompt's
imports above it and the task's `check(entry_point)` tests below it, and runs the program in the
sandbox (`nanochat.common.sandbox.run_python`, 5 s, 256 MB). A pass is a zero exit code.
"""

from __future__ import annotations

import re

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, RowTask, load_rows

FENCE_RE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The first fenced code block (```python or ```), else the whole completion."""
    m = FENCE_RE.search(completion)
    return (m.group(1) if m else completion).strip("\n")


def prompt_imports(prompt: str) -> str:
    """The import lines at the top of a HumanEval prompt (completions often leave them out)."""
    out = []
    for line in prompt.splitlines():
        s = line.strip()
        if s.startswith("import ") or s.startswith("from "):
            out.append(s)
        elif s.startswith("def "):
            break
    return "\n".join(out)


def build_program(row: dict, completion: str) -> str:
    code = extract_program(completion)
    return f"{prompt_imports(row['prompt'])}\n\n{code}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"


def sandbox_runner():
    """`run_python` from the sandbox, or a one-line error saying HumanEval needs it."""
    try:
        from nanochat.common.sandbox import run_python
    except ImportError as e:
        raise NanochatError("HumanEval needs the code sandbox (nanochat.common.sandbox), which is not in this build; leave humaneval out of --tasks") from e
    return run_python


class HumanEval(RowTask):
    name = "HumanEval"
    eval_type = "generative"
    random_baseline = 0.0

    def __init__(self, source: str = "auto", **kwargs):
        super().__init__(**kwargs)
        loaded = load_rows(("openai/openai_humaneval", "openai_humaneval", "test"), "tasks/humaneval.jsonl", source=source, what="HumanEval")
        self._use_rows(loaded)
        self._run = None

    def get_example(self, index: int) -> Conversation:
        row = self.rows[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
            ],
            "task_id": row["task_id"],
            "row": index,
        }

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        if self._run is None:
            self._run = sandbox_runner()
        row = self.rows[conversation["row"]]
        result = self._run(build_program(row, completion), timeout=5.0, memory_mb=256)
        return bool(result.success)
