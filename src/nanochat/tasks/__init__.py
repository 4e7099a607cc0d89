"""The datasets of each task, with their scoring: MMLU, ARC, GSM8K, HumanEval, SpellingBee,
SimpleSpelling, SmolTalk, CustomJSON, identity conversations; plus TaskMixture and TaskSequence.

Import the task classes from their modules (e.g. `from nanochat.tasks.gsm8k import GSM8K`);
`get_eval_task(name)` builds an evaluation task from its `nanochat eval --tasks` name, and
`nanochat.tasks.mixtures` holds the SFT mixtures and the RL task for `--data web|demo`.
"""

from __future__ import annotations

EVAL_TASK_NAMES = ("arc-easy", "arc-challenge", "mmlu", "gsm8k", "humaneval", "spellingbee")


def get_eval_task(name: str, source: str = "auto"):
    """The test split of a chat-eval task by its CLI name."""
    from nanochat.common.errors import NanochatError

    if name == "arc-easy":
        from nanochat.tasks.arc import ARC

        return ARC("ARC-Easy", "test", source=source)
    if name == "arc-challenge":
        from nanochat.tasks.arc import ARC

        return ARC("ARC-Challenge", "test", source=source)
    if name == "mmlu":
        from nanochat.tasks.mmlu import MMLU

        return MMLU("all", "test", source=source)
    if name == "gsm8k":
        from nanochat.tasks.gsm8k import GSM8K

        return GSM8K("main", "test", source=source)
    if name == "humaneval":
        from nanochat.tasks.humaneval import HumanEval

        return HumanEval(source=source)
    if name == "spellingbee":
        from nanochat.tasks.spellingbee import SpellingBee

        return SpellingBee(size=256, split="test")
    raise NanochatError(f"unknown eval task {name!r}; use one of {', '.join(EVAL_TASK_NAMES)}")
