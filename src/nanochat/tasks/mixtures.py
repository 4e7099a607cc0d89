"""The data of the chat stages: the SFT training and validation mixtures and the RL task.

`--data web` uses the reference's sets from the Hugging Face Hub (SFT: SmolTalk, 3x MMLU
auxiliary_train, 4x GSM8K train, 2x identity, SimpleSpelling, SpellingBee; validation: SmolTalk test,
MMLU test[:5200], GSM8K test[:420]; RL: GSM8K train, evaluated on GSM8K test). It fails clearly
when the Hub cannot be reached; it never falls back to the packaged data.

`--data demo` uses only the data packaged with nanochat, sized for a CPU demo, and keeps every
evaluation set out of training: the chat sets (ChatterBot, ChitChat) minus a held-out tail for
validation, MMLU dev+validation and ARC validation as multiple-choice practice (the evals use the
test splits), GSM8K's `train-from-test` partition (labelled; RL is then evaluated on
`test-heldout`, and `nanochat eval` on the whole test split is no longer a clean measure), identity
conversations and the spelling tasks.
"""

from __future__ import annotations

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Task, TaskMixture

DEMO_VAL_CHATS = 100  # conversations of each packaged chat set held out for validation


def _check(data: str) -> str:
    if data not in ("web", "demo"):
        raise NanochatError(f"chat-stage data {data!r} is not web or demo; use --data web (Hugging Face sets) or --data demo (packaged)")
    return data


def sft_train_tasks(data: str, mmlu_epochs: int = 3, gsm8k_epochs: int = 4) -> list[Task]:
    """The tasks of the SFT training mixture, a task listed once per epoch (oversampling)."""
    from nanochat.tasks.arc import ARC
    from nanochat.tasks.customjson import PackagedChat
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.identity import IdentityConversations
    from nanochat.tasks.mmlu import MMLU
    from nanochat.tasks.smoltalk import SmolTalk
    from nanochat.tasks.spellingbee import SimpleSpelling, SpellingBee

    identity = IdentityConversations(size=1000)
    if _check(data) == "web":
        smoltalk = SmolTalk("train", source="hub")
        mmlu = MMLU("all", "auxiliary_train", source="hub")
        gsm8k = GSM8K("main", "train", source="hub")
        return [smoltalk, *[mmlu] * mmlu_epochs, *[gsm8k] * gsm8k_epochs, identity, identity, SimpleSpelling(200_000, "train"), SpellingBee(80_000, "train")]
    chats = [PackagedChat("chatterbot")[:-DEMO_VAL_CHATS], PackagedChat("chitchat")[:-DEMO_VAL_CHATS]]
    mc = [MMLU("all", "dev", source="packaged"), MMLU("all", "validation", source="packaged"), ARC("ARC-Easy", "validation", source="packaged"), ARC("ARC-Challenge", "validation", source="packaged")]
    gsm8k = GSM8K("main", "train-from-test", source="packaged")
    return [*chats, *mc, *[gsm8k] * gsm8k_epochs, identity, identity, SimpleSpelling(20_000, "train"), SpellingBee(8_000, "train")]


def sft_val_tasks(data: str) -> list[Task]:
    """The SFT validation mixture's tasks (disjoint from the training mixture)."""
    from nanochat.tasks.customjson import PackagedChat
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.mmlu import MMLU
    from nanochat.tasks.smoltalk import SmolTalk

    if _check(data) == "web":
        return [SmolTalk("test", source="hub"), MMLU("all", "test", source="hub")[:5200], GSM8K("main", "test", source="hub")[:420]]
    return [PackagedChat("chatterbot")[-DEMO_VAL_CHATS:], PackagedChat("chitchat")[-DEMO_VAL_CHATS:], GSM8K("main", "test-heldout", source="packaged")]


def sft_mixtures(data: str, mmlu_epochs: int = 3, gsm8k_epochs: int = 4) -> tuple[TaskMixture, TaskMixture]:
    """(train, validation) mixtures, each shuffled with seed 42."""
    return TaskMixture(sft_train_tasks(data, mmlu_epochs, gsm8k_epochs)), TaskMixture(sft_val_tasks(data))


def rl_tasks(data: str) -> tuple[Task, Task]:
    """(train, eval) GSM8K for RL: train/test online, train-from-test/test-heldout offline."""
    from nanochat.tasks.gsm8k import GSM8K

    if _check(data) == "web":
        return GSM8K("main", "train", source="hub"), GSM8K("main", "test", source="hub")
    return GSM8K("main", "train-from-test", source="packaged"), GSM8K("main", "test-heldout", source="packaged")


def describe(tasks: list[Task]) -> list[tuple[str, int, str]]:
    """(name, examples, data source) per distinct task, with repeats folded into the count."""
    rows: dict[int, list] = {}
    for t in tasks:
        if id(t) in rows:
            rows[id(t)][1] += len(t)
        else:
            rows[id(t)] = [t.name, len(t), t.data_source]
    return [tuple(r) for r in rows.values()]
