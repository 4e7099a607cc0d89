"""The chat-eval task registry: one entry per task that `nanochat eval --tasks` can run.

Each entry names the task (its CLI name), how it is shown (report title, what one example counts as), how it
is scored (categorical letter choice or generative pass@k), its chance accuracy (for centering and the report's
chance line), whether it belongs to ChatCORE, and how to build its test split. The evals, the report, the CLI
help, `prepare-evals` and the speedrun read this table; adding a task is one module with its `Task` class and
one `register(...)` line below.

ChatCORE is the mean over its tasks of (accuracy - chance) / (1 - chance), the reference's definition over
ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval and SpellingBee; a registered task joins it only with
`chatcore=True`, which changes what ChatCORE means, so new tasks leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nanochat.common.errors import NanochatError


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the `--tasks` name
    title: str  # the report's label
    eval_type: str  # "categorical" (letter choice, one forward) or "generative" (sampled answers, pass@k)
    chance: float  # accuracy by guessing: 1/4 for four letters, 0 for free answers
    unit: str  # what one example is: questions, problems
    build: Callable[[str], object]  # source ("auto" | "hub" | "packaged") -> the test split, a Task
    chatcore: bool = False  # one of the tasks ChatCORE averages
    needs_sandbox: bool = False  # answers are programs run in the code sandbox


_REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.eval_type not in ("categorical", "generative"):
        raise ValueError(f"task {spec.name!r}: eval_type {spec.eval_type!r} is not categorical or generative")
    if spec.name in _REGISTRY or spec.name in ("core", "bpb", "chatcore"):
        raise ValueError(f"task name {spec.name!r} is taken")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Take a task out again (tests that register a toy task)."""
    _REGISTRY.pop(name, None)


def task_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def chatcore_names() -> tuple[str, ...]:
    return tuple(n for n, s in _REGISTRY.items() if s.chatcore)


def spec(name: str) -> TaskSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NanochatError(f"unknown eval task {name!r}; use one of {', '.join(_REGISTRY)}") from None


def build(name: str, source: str = "auto"):
    """The test split of a registered task."""
    return spec(name).build(source)


def _arc(subset: str):
    def make(source: str):
        from nanochat.tasks.arc import ARC

        return ARC(subset, "test", source=source)

    return make


def _mmlu(source: str):
    from nanochat.tasks.mmlu import MMLU

    return MMLU("all", "test", source=source)


def _gsm8k(source: str):
    from nanochat.tasks.gsm8k import GSM8K

    return GSM8K("main", "test", source=source)


def _humaneval(source: str):
    from nanochat.tasks.humaneval import HumanEval

    return HumanEval(source=source)


def _spellingbee(source: str):
    from nanochat.tasks.spellingbee import SpellingBee

    return SpellingBee(size=256, split="test")  # generated from the packaged word list: no download source


def _demo_arith(source: str):
    from nanochat.tasks.arithmetic import DemoArith

    return DemoArith("test")  # templated word problems (the demo's RL task): no download source


register(TaskSpec("arc-easy", "ARC-Easy", "categorical", 0.25, "questions", _arc("ARC-Easy"), chatcore=True))
register(TaskSpec("arc-challenge", "ARC-Challenge", "categorical", 0.25, "questions", _arc("ARC-Challenge"), chatcore=True))
register(TaskSpec("mmlu", "MMLU", "categorical", 0.25, "questions", _mmlu, chatcore=True))
register(TaskSpec("gsm8k", "GSM8K", "generative", 0.0, "problems", _gsm8k, chatcore=True))
register(TaskSpec("humaneval", "HumanEval", "generative", 0.0, "problems", _humaneval, chatcore=True, needs_sandbox=True))
register(TaskSpec("spellingbee", "SpellingBee", "generative", 0.0, "questions", _spellingbee, chatcore=True))
register(TaskSpec("demo-arith", "DemoArith", "generative", 0.0, "problems", _demo_arith))
