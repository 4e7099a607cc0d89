"""DemoArith: small-number arithmetic word problems from templates, the RL task of the CPU demo.

A problem is a template (one of `TEMPLATES`, each with its operation) and two numbers from 1 to 20;
the names and objects in it follow from those three by a fixed seed. Every valid (template, a, b)
is enumerated once (subtractions whose result would be negative are left out), shuffled with
`random.Random(SPLIT_SEED)`, and the first `TEST_PROBLEMS` form the `test` split, the rest `train`,
so the two splits never share a problem. A split larger than its pool cycles through it.

The answer calls the calculator on the expression and copies its result after `#### `:
`<|python_start|>7+5<|python_end|><|output_start|>12<|output_end|>\n\n#### 12`, so a model has to
read the two numbers and pick the operation; it is graded like GSM8K (the number after `#### `).
A model small enough for a CPU learns the format from a few hundred SFT examples and then gets some
problems right, which is what RL needs: groups of rollouts whose rewards differ.
"""

from __future__ import annotations

import random
from functools import lru_cache

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, Task
from nanochat.tasks.gsm8k import extract_answer

MAX_NUMBER = 20
SPLIT_SEED = 16
TEST_PROBLEMS = 300

NAMES = ("Anne", "Tom", "Emma", "Jack", "Mia", "Sam", "Lucy", "Ben")
THINGS = ("apples", "books", "coins", "shells", "pens", "cards", "eggs", "stamps")

# (template, operator): {n} a name, {t} plural things, {a} and {b} the numbers
TEMPLATES = (
    ("{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", "+"),
    ("There are {a} {t} in a box and {b} {t} in a bag. How many {t} are there in all?", "+"),
    ("{n} has {a} {t} and gives {b} away. How many {t} are left?", "-"),
    ("{n} had {a} {t} and lost {b} of them. How many {t} does {n} have now?", "-"),
    ("{n} buys {a} bags with {b} {t} in each. How many {t} is that?", "*"),
    ("{n} puts {b} {t} on each of {a} shelves. How many {t} are on the shelves?", "*"),
)


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@lru_cache(maxsize=1)
def _splits() -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
    """(train keys, test keys): every valid (template, a, b) once, shuffled with a fixed seed."""
    keys = [(t, a, b) for t, (_, op) in enumerate(TEMPLATES) for a in range(1, MAX_NUMBER + 1) for b in range(1, MAX_NUMBER + 1)
            if op != "-" or a >= b]  # fmt: skip
    random.Random(SPLIT_SEED).shuffle(keys)
    return tuple(keys[TEST_PROBLEMS:]), tuple(keys[:TEST_PROBLEMS])


def problem(key: tuple[int, int, int]) -> Conversation:
    """The conversation of one (template, a, b): the question and the calculator-using answer."""
    t, a, b = key
    template, op = TEMPLATES[t]
    rng = random.Random(t * 10_000 + a * 100 + b)  # the names and objects are part of the problem
    question = template.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b)
    answer = _value(a, op, b)
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": [
                {"type": "python", "text": f"{a}{op}{b}"},
                {"type": "python_output", "text": str(answer)},
                {"type": "text", "text": f"\n\n#### {answer}"},
            ]},
        ],
        "answer": answer,
    }  # fmt: skip


class DemoArith(Task):
    name = "DemoArith"
    eval_type = "generative"
    random_baseline = 0.0

    def __init__(self, split: str = "train", size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise NanochatError(f"DemoArith has no split {split!r}; use train or test")
        self.split = split
        self.keys = _splits()[0 if split == "train" else 1]
        self.size = len(self.keys) if size is None else size
        self.data_source = f"synthetic ({len(self.keys)} {split} problems from {len(TEMPLATES)} templates, numbers 1-{MAX_NUMBER}, disjoint splits)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        return problem(self.keys[index % len(self.keys)])

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        return extract_answer(completion) == str(conversation["answer"])
