"""Small sums answered with the calculator tool: synthetic conversations that teach the tool call.

"What is 12 times 7?" -> the assistant writes `<|python_start|>12*7<|python_end|>`, the calculator's
result `84` follows as tool output (`python_output`, never trained on: the engine forces it at
inference), and the answer closes with a sentence that repeats the result ("12 times 7 is 84.").
This is GSM8K's tool-call format (tasks/gsm8k.py) on one-step problems, so even a CPU-sized model
can learn to copy the two numbers into the call and the result out of it.

Conversation i comes from `random.Random(seed * 1_000_003 + i)`: an operation (+, -, *, exact
division), its operands (sums and differences up to 999, products of numbers up to 30 or a number up
to 99 by one up to 9, divisions whose result is whole) and one of several phrasings. `split="train"`
and `split="test"` use different seeds, so a test set is a fresh draw, not a copy.
"""

from __future__ import annotations

import random

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Conversation, Task

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


def arithmetic_conversation(rng: random.Random) -> Conversation:
    op = rng.choice(tuple(OPERATIONS))
    word, templates = OPERATIONS[op]
    a, b, result = operands(op, rng)
    call = f"{a}{'//' if op == '/' else op}{b}"  # // keeps an exact quotient whole: 84//7 -> 12, not 12.0
    closing = f"{a} {word} {b} is {result}." if rng.random() < 0.7 else f"The answer is {result}."
    return {
        "messages": [
            {"role": "user", "content": rng.choice(templates).format(a=a, b=b)},
            {"role": "assistant", "content": [
                {"type": "python", "text": call},
                {"type": "python_output", "text": str(result)},
                {"type": "text", "text": closing},
            ]},
        ]
    }  # fmt: skip


class SimpleArithmetic(Task):
    """One-step sums with a calculator call (see the module docstring)."""

    name = "arithmetic"
    eval_type = None

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        if split not in SEEDS:
            raise NanochatError(f"arithmetic has no split {split!r}; use train or test")
        self.size, self.split = size, split
        self.data_source = "synthetic (calculator sums)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        return arithmetic_conversation(random.Random(SEEDS[self.split] * 1_000_003 + index))
