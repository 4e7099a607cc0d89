"""Arithmetic answered with the calculator tool: the demo's two synthetic sets, both with disjoint splits.

Both answer in GSM8K's tool-call format (tasks/gsm8k.py): the assistant writes the expression between
`<|python_start|>` and `<|python_end|>`, the calculator's result follows as tool output (`python_output`,
never trained on: the engine forces it at inference), and a closing text repeats the result.

`SimpleArithmetic` (`arithmetic`, in the demo's SFT mixture): "What is 12 times 7?" ->
`<|python_start|>12*7<|python_end|>` `84` "12 times 7 is 84." Conversation i comes from
`random.Random(seed * 1_000_003 + i)`: an operation (+, -, *, exact division), its operands (sums and
differences up to 999, products of numbers up to 30 or a number up to 99 by one up to 9, divisions whose
result is whole) and one of several phrasings. A problem (its expression) belongs to the test split when
the CRC-32 of the expression is 0 mod `SIMPLE_TEST_EVERY`; each split redraws until it gets one of its
own, and the train split also passes over the expressions of DemoArith's test problems, so nothing a
held-out score is measured on is ever trained on.

`DemoArith` (`demo-arith`, the demo's RL task and an eval task): word problems from `TEMPLATES`, each a
template with its operation and two numbers from 1 to `MAX_NUMBER`; the names and objects follow from
those three by a fixed seed. Every valid (template, a, b) is enumerated once (subtractions whose result
would be negative are left out), shuffled with `random.Random(SPLIT_SEED)`, and the first `TEST_PROBLEMS`
form the `test` split, the rest `train`, so the two splits never share a problem (a split larger than its
pool cycles through it). The answer ends `\\n\\n#### <result>` and is graded like GSM8K (the number after
`#### `), so a model has to read the two numbers and pick the operation.
"""

from __future__ import annotations

import random
import zlib
from functools import lru_cache

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, Task
from nanochat.tasks.gsm8k import extract_answer

SPLITS = ("train", "test")


def tool_answer(question: str, call: str, result: int, closing: str) -> Conversation:
    """A user question and the assistant's calculator call, the calculator's result and the closing text."""
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": [
                {"type": "python", "text": call},
                {"type": "python_output", "text": str(result)},
                {"type": "text", "text": closing},
            ]},
        ]
    }  # fmt: skip


def _check_split(task: str, split: str) -> None:
    if split not in SPLITS:
        raise NanochatError(f"{task} has no split {split!r}; use train or test")


# ------------------------------------------------------------------------------------------------
# DemoArith: templated word problems

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
    answer = _value(a, op, b)
    conversation = tool_answer(template.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b), f"{a}{op}{b}", answer, f"\n\n#### {answer}")
    return {**conversation, "answer": answer}


@lru_cache(maxsize=1)
def demo_test_calls() -> frozenset[str]:
    """The calculator expressions of DemoArith's test problems (kept out of SimpleArithmetic's train split)."""
    return frozenset(f"{a}{TEMPLATES[t][1]}{b}" for t, a, b in _splits()[1])


class DemoArith(Task):
    name = "DemoArith"
    eval_type = "generative"
    random_baseline = 0.0

    def __init__(self, split: str = "train", size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        _check_split("DemoArith", split)
        self.split = split
        self.keys = _splits()[SPLITS.index(split)]
        self.size = len(self.keys) if size is None else size
        self.data_source = f"synthetic ({len(self.keys)} {split} problems from {len(TEMPLATES)} templates, numbers 1-{MAX_NUMBER}, disjoint splits)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        return problem(self.keys[index % len(self.keys)])

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        return extract_answer(completion) == str(conversation["answer"])


# ------------------------------------------------------------------------------------------------
# SimpleArithmetic: one-step sums

# (operator in the call, the word in the answer, question templates)
OPERATIONS = {
    "+": ("plus", (
        "What is {a} plus {b}?", "What is {a} + {b}?", "What's {a} + {b}?", "Calculate {a} + {b}.", "How much is {a} plus {b}?",
        "Add {a} and {b}.", "What do you get if you add {a} and {b}?", "{a} + {b} = ?", "Can you compute {a} + {b}?", "what is {a}+{b}",
        "What is the sum of {a} and {b}?",
    )),
    "-": ("minus", (
        "What is {a} minus {b}?", "What is {a} - {b}?", "What's {a} - {b}?", "Calculate {a} - {b}.", "How much is {a} minus {b}?",
        "Subtract {b} from {a}.", "{a} - {b} = ?", "what is {a}-{b}",
    )),
    "*": ("times", (
        "What is {a} times {b}?", "What is {a} * {b}?", "What's {a} x {b}?", "Calculate {a} * {b}.", "How much is {a} times {b}?",
        "Multiply {a} by {b}.", "What is {a} multiplied by {b}?", "{a} * {b} = ?", "what is {a}*{b}", "What is the product of {a} and {b}?",
    )),
    "/": ("divided by", (
        "What is {a} divided by {b}?", "What is {a} / {b}?", "Calculate {a} / {b}.", "How much is {a} divided by {b}?", "Divide {a} by {b}.",
        "{a} / {b} = ?",
    )),
}  # fmt: skip
SEEDS = {"train": 0, "test": 1}
SIMPLE_TEST_EVERY = 10  # about one expression in 10 is a test problem


def operands(op: str, rng: random.Random) -> tuple[int, int, int]:
    """(a, b, result) for one problem with operator `op`."""
    if op == "+":
        hi = rng.choice((20, 100, 1000))
        a, b = rng.randrange(1, hi), rng.randrange(1, hi)
        return a, b, a + b
    if op == "-":
        hi = rng.choice((20, 100, 1000))
        a, b = sorted((rng.randrange(1, hi), rng.randrange(1, hi)), reverse=True)
        return a, b, a - b
    if op == "*":
        a, b = (rng.randrange(2, 31), rng.randrange(2, 31)) if rng.random() < 0.6 else (rng.randrange(10, 100), rng.randrange(2, 10))
        return (a, b, a * b) if rng.random() < 0.5 else (b, a, a * b)
    b, q = rng.randrange(2, 13), rng.randrange(2, 51)
    return b * q, b, q


def simple_split(call: str) -> str:
    """The split a SimpleArithmetic expression belongs to ('reserved': a DemoArith test expression, in neither)."""
    if call in demo_test_calls():
        return "reserved"
    return "test" if zlib.crc32(call.encode()) % SIMPLE_TEST_EVERY == 0 else "train"


def arithmetic_conversation(rng: random.Random, split: str = "train") -> Conversation:
    """One sum of `split`: draws from `rng` until the expression belongs to that split."""
    while True:
        op = rng.choice(tuple(OPERATIONS))
        word, templates = OPERATIONS[op]
        a, b, result = operands(op, rng)
        call = f"{a}{'//' if op == '/' else op}{b}"  # // keeps an exact quotient whole: 84//7 -> 12, not 12.0
        if simple_split(call) == split:
            break
    closing = f"{a} {word} {b} is {result}." if rng.random() < 0.7 else f"The answer is {result}."
    return tool_answer(rng.choice(templates).format(a=a, b=b), call, result, closing)


class SimpleArithmetic(Task):
    """One-step sums with a calculator call (see the module docstring)."""

    name = "arithmetic"
    eval_type = None

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        _check_split("arithmetic", split)
        self.size, self.split = size, split
        self.data_source = "synthetic (calculator sums)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        return arithmetic_conversation(random.Random(SEEDS[self.split] * 1_000_003 + index), self.split)
