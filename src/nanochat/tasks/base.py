"""What every task shares: sliced views, mixtures, sequences, multiple-choice rendering, data loading.

A task is a list of conversations (`{"messages": [...], ...extra fields}`) plus, for evaluation, a
way to score a completion. `task[i]` is one conversation; `task[a:b:c]` is a view of the same task
(no copy). `TaskMixture` shuffles several tasks together (pass one twice to oversample it);
`TaskSequence` plays them one after another (a curriculum).

`load_rows` is how a task gets its data: the Hugging Face parquet export when online, the data
packaged with nanochat offline. Either way the task's `data_source` says which one it used.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from nanochat.common.errors import NanochatError

Conversation = dict[str, Any]


class Task(ABC):
    """A sequence of conversations. Subclasses implement `num_examples` and `get_example`, and for
    evaluation `eval_type` ("categorical" | "generative") and `evaluate`."""

    name: str = "task"
    eval_type: str | None = None  # None: training data only
    data_source: str = "synthetic"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if step == 0:
            raise NanochatError("a task slice step cannot be 0")
        self._slices: tuple[slice, ...] = (slice(start, stop, step),)

    # --- what subclasses provide ---------------------------------------------------------------
    @abstractmethod
    def num_examples(self) -> int: ...

    @abstractmethod
    def get_example(self, index: int) -> Conversation: ...

    def evaluate(self, conversation: Conversation, completion: str) -> bool:
        raise NanochatError(f"{self.name} has no scoring: it is training data only")

    def reward(self, conversation: Conversation, completion: str) -> float:
        return float(self.evaluate(conversation, completion))

    # --- views --------------------------------------------------------------------------------
    def _range(self) -> range:
        r = range(self.num_examples())
        for s in self._slices:
            r = r[s]
        return r

    def __len__(self) -> int:
        return len(self._range())

    def __getitem__(self, i):
        if isinstance(i, slice):
            view = object.__new__(type(self))
            view.__dict__.update(self.__dict__)
            view._slices = self._slices + (i,)
            return view
        r = self._range()
        try:
            return self.get_example(r[i])
        except IndexError:
            raise IndexError(f"{self.name}: index {i} out of range for {len(r)} examples") from None

    def __iter__(self) -> Iterator[Conversation]:
        for j in self._range():
            yield self.get_example(j)

    def describe(self) -> str:
        return f"{self.name} ({len(self)} examples, {self.data_source})"


class RowTask(Task):
    """A task over loaded rows, one conversation per row, shuffled with seed 42 like the reference."""

    rows: list
    split: str | None = None

    def _use_rows(self, loaded, split: str | None = None, shuffle: bool = True) -> None:
        """Take the rows and data source of a `hub.load_rows` result."""
        self.rows = shuffled(loaded.rows, 42) if shuffle else list(loaded.rows)
        self.data_source = loaded.source
        self.split = split

    def num_examples(self) -> int:
        return len(self.rows)


class TaskMixture:
    """Several tasks shuffled together with `random.Random(seed)`; a task passed twice appears twice
    as often (oversampling by repetition)."""

    def __init__(self, tasks: list[Task], seed: int = 42):
        if not tasks:
            raise NanochatError("TaskMixture needs at least one task")
        self.tasks = list(tasks)
        self.index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Conversation:
        t, j = self.index[i]
        return self.tasks[t][j]

    def __iter__(self) -> Iterator[Conversation]:
        for i in range(len(self)):
            yield self[i]


class TaskSequence:
    """Tasks one after another, in the given order (for a curriculum)."""

    def __init__(self, tasks: list[Task]):
        if not tasks:
            raise NanochatError("TaskSequence needs at least one task")
        self.tasks = list(tasks)
        self.lengths = [len(t) for t in self.tasks]

    def __len__(self) -> int:
        return sum(self.lengths)

    def __getitem__(self, i: int) -> Conversation:
        if i < 0:
            i += len(self)
        for task, n in zip(self.tasks, self.lengths):
            if 0 <= i < n:
                return task[i]
            i -= n
        raise IndexError(f"TaskSequence index out of range for {len(self)} examples")

    def __iter__(self) -> Iterator[Conversation]:
        for task in self.tasks:
            yield from task


def render_mc(question: str, letters: list[str] | tuple[str, ...], choices: list[str]) -> str:
    """The multiple-choice prompt: each choice followed by `=LETTER` (no space before the letter, so
    the letter tokenises the same way as the answer the model gives)."""
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


# --- loading --------------------------------------------------------------------------------------


@dataclass
class Loaded:
    rows: list[dict]
    source: str  # "hub:<repo> <subset>/<split>" or "packaged:<file>"


def read_packaged_jsonl(relpath: str) -> list[dict]:
    from nanochat.data.resources import open_resource

    rows = []
    with open_resource(relpath) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def load_rows(
    hub: tuple[str, str, str] | None,
    packaged: str | None,
    *,
    from_hub: Callable[[dict], dict] = lambda r: r,
    source: str = "auto",
    what: str = "this task",
) -> Loaded:
    """Rows from the Hub parquet export (`hub` = (repo_id, subset, split)) or the packaged JSONL.

    source: "auto" (an earlier download, else the Hub unless NANOCHAT_OFFLINE=1 or it cannot be
    reached, else the packaged file), "hub" or "packaged". `from_hub` maps a Hub row to the packaged
    row format, so the task reads one format.
    """
    from nanochat.common.logging import print0
    from nanochat.tasks import hub as hf

    if source not in ("auto", "hub", "packaged"):
        raise NanochatError(f"unknown data source {source!r}; use auto, hub or packaged")
    if source in ("auto", "hub") and hub is not None:
        repo, subset, split = hub
        label = f"hub:{repo} {subset}/{split}"
        files = hf.cached_files(repo, subset, split)
        if files is None and (source == "hub" or not hf.offline()):
            try:
                files = hf.fetch_split(repo, subset, split)
            except hf.HubUnavailable as e:
                if source == "hub" or packaged is None:
                    raise
                print0(f"[dim]{what}: Hugging Face unreachable ({str(e).split(';')[0]}); using the packaged copy[/dim]")
        if files is not None:
            return Loaded([from_hub(r) for r in hf.read_parquet_rows(files)], label)
    if source == "hub" and hub is None:
        raise NanochatError(f"{what} has no Hugging Face source; use source='auto' or 'packaged'")
    if packaged is None:
        raise NanochatError(f"{what} is not in the packaged data and the Hub could not be used; connect to the internet (and unset NANOCHAT_OFFLINE)")
    return Loaded(read_packaged_jsonl(packaged), f"packaged:{packaged}")


def shuffled(rows: list, seed: int = 42) -> list:
    """Rows in the order `datasets.Dataset.shuffle(seed)` gives (a numpy default_rng permutation)."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(len(rows))
    return [rows[int(i)] for i in perm]
