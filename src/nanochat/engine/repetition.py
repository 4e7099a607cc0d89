"""Repetition guards without torch: the chat defaults, their range check, and the n-gram block.

`nanochat chat` and `nanochat serve` sample with `CHAT_REPETITION_PENALTY` and `CHAT_NO_REPEAT_NGRAM`
(their options and request fields set or disable them); the Engine's own defaults, which the evals
use, are off (penalty 1.0, n-gram 0). The penalty itself acts on logits: see
`engine.sampling.apply_repetition_penalty`. This module imports no torch, so the command modules can
read the defaults while `nanochat --help` stays fast.

OpenAI's `frequency_penalty` and `presence_penalty` are a different thing, kept apart: additive
(the logit of a token the answer used c times drops by frequency × c + presence × [c > 0]), from -2
to 2, off (0) unless a request sets them (`check_openai_penalties`; applied by
`engine.sampling.apply_frequency_presence`). The multiplicative repetition penalty is never derived
from them, nor they from it: a request may set any of the four.
"""

from __future__ import annotations

import math

# Measured on the demo's chat models (tests/data/demo_prompts.jsonl, greedy): the loopy early demo model
# left 40 of 45 answers in a loop or unfinished without guards and 3 with these; a trained one scores the
# same with or without them. A word of a small vocabulary is several tokens, so a 4-token block would
# forbid saying a name like "nanochat" twice and derail answers; 8 tokens only catches real loops.
CHAT_REPETITION_PENALTY = 1.15
CHAT_NO_REPEAT_NGRAM = 8
MAX_REPETITION_PENALTY = 10.0
MAX_NO_REPEAT_NGRAM = 64
MAX_OPENAI_PENALTY = 2.0  # OpenAI's range for frequency_penalty and presence_penalty: -2 to 2


def check_repetition_settings(repetition_penalty: float, no_repeat_ngram: int) -> None:
    """ValueError with a one-line reason unless 1 <= penalty <= 10 and n is 0 (off) or 2..64."""
    if not (math.isfinite(repetition_penalty) and 1.0 <= repetition_penalty <= MAX_REPETITION_PENALTY):
        raise ValueError(f"repetition penalty {repetition_penalty} must be between 1 (off) and {MAX_REPETITION_PENALTY:g}")
    if no_repeat_ngram != 0 and not 2 <= no_repeat_ngram <= MAX_NO_REPEAT_NGRAM:
        raise ValueError(f"no-repeat n-gram size {no_repeat_ngram} must be 0 (off) or 2 to {MAX_NO_REPEAT_NGRAM}")


def check_openai_penalties(frequency_penalty: float, presence_penalty: float) -> None:
    """ValueError with a one-line reason unless both are finite and within -2..2 (OpenAI's range)."""
    for name, v in (("frequency penalty", frequency_penalty), ("presence penalty", presence_penalty)):
        if not (math.isfinite(v) and -MAX_OPENAI_PENALTY <= v <= MAX_OPENAI_PENALTY):
            raise ValueError(f"{name} {v} must be between -{MAX_OPENAI_PENALTY:g} and {MAX_OPENAI_PENALTY:g} (0: off)")


class NgramBlocker:
    """Which tokens would repeat an n-gram of one token sequence, updated one token at a time.

    After `push(t)` for every token of the history, `banned()` is the set of tokens x such that
    (the last n-1 tokens, x) already occurs in the history. n = 1 would ban every seen token; n >= 2."""

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"an n-gram block needs n >= 2 (got {n})")
        self.n = n
        self.history: list[int] = []
        self._next: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> the tokens seen right after it

    def push(self, token: int) -> None:
        self.history.append(int(token))
        if len(self.history) >= self.n:
            gram = tuple(self.history[-self.n :])
            self._next.setdefault(gram[:-1], set()).add(gram[-1])

    def banned(self) -> set[int]:
        if len(self.history) < self.n - 1:
            return set()
        return set(self._next.get(tuple(self.history[len(self.history) - self.n + 1 :]), ()))
