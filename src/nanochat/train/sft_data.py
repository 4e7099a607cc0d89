"""SFT data: the conversation mixture and its BOS-aligned best-fit packing into fixed-size rows.

`sft_mixture(data, seed)` returns the train and validation mixtures plus one line per set used:

- `web` (online, the reference): SmolTalk train + 3× MMLU auxiliary_train + 4× GSM8K train
  (+ 1,000 identity conversations); validation SmolTalk test + MMLU test[:5200] + GSM8K test[:420].
- `demo` (offline, packaged data only), built for what a CPU-sized model can learn in a few hundred
  short steps: short conversations only. The packaged ChatterBot answers, the first exchange of the
  packaged ChitChat conversations (the rest of each is long, informal and cut at the row anyway),
  identity conversations, small talk, questions about the Austen novels the demo pretrains on and
  one-step sums with calculator calls (tasks/identity.py, tasks/austen.py, tasks/arithmetic.py), and
  160 DemoArith train problems (tasks/arithmetic.py: the demo's RL task; enough to teach its answer
  format, so that RL starts from a model that solves some of them, not all).
  `DEMO_MIXTURE` holds the sizes. No eval (test) split is ever trained on; the multiple-choice and
  spelling sets are left out (they are long, and a model this small scores chance on them anyway).
  Validation is about one conversation in 20 of each of these sets, chosen by a hash of its content
  (never in the train mixture, even where a set repeats a conversation; spread over the whole set,
  because the packaged ChatterBot file is sorted by topic).
- your own conversations (`--data FILE.jsonl|NAME` alone, or `--add FILE.jsonl[:EPOCHS]` on top of a
  mixture; files are read and checked by `data.chat_jsonl`): held out the same way, the train side
  repeated EPOCHS times.

`SFTPacker` turns a mixture into `(inputs, targets)` batches (see docs/reference.md, "Data and evaluation"). Rank r reads
conversations `r, r+N, r+2N, ...` (wrapping into the next epoch), renders each with the tokenizer's
`render_conversation` (cut to one row, `seq_len + 1` tokens, so no conversation ever spans two
rows; a conversation left with no assistant token is passed over) and keeps a buffer of 100. Each row takes the largest buffered conversation that still fits,
again and again; when none fits, the rest of the row is padded with BOS and the row is done (a
conversation is never cropped to fill a row). Targets are the next tokens, set to -1 where the
target token's mask is 0 (BOS, user turns, `<|assistant_start|>`, tool outputs) and on padding.
`state_dict()` (cursor, epoch and the buffer) makes a resumed run read exactly the same batches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nanochat.common.errors import NanochatError
from nanochat.tasks.base import Task

VAL_EVERY = 20  # about one conversation in 20 of a demo set is validation (5%)
# conversations per set of the demo mixture (before validation is taken out): ~470K tokens, more than
# the demo's 300 SFT steps read (the synthetic sets are drawn fresh, so what is not read is no loss).
# Calculator sums get the most: copying the numbers into the call is what a small model learns last.
# DemoArith gets few on purpose: enough to teach its answer format, so that the SFT model solves about a
# third of the held-out problems (with all 1,638 it solves ~95% and RL has nothing left to improve; with
# 400, ~80%), and RL then has groups whose rewards differ.
DEMO_MIXTURE = {"chatterbot repeats": 1, "chitchat": 600, "identity": 1000, "small talk": 800, "austen": 2000, "arithmetic": 3000, "demo arith": 160}


@dataclass
class MixturePart:
    name: str
    train: int  # conversations in the train mixture (repeats counted)
    val: int
    source: str


def _held_out(task, parts: list, train: list, val: list, repeats: int = 1) -> None:
    """Split `task` by content: a conversation is validation when the sha256 of its JSON is 0 mod
    VAL_EVERY, so all copies of a repeated conversation (the packaged ChatterBot file has many) land on
    the same side. The train side enters the mixture `repeats` times."""
    val_idx, train_idx = [], []
    for i in range(len(task)):
        digest = hashlib.sha256(json.dumps(task[i]["messages"], sort_keys=True).encode()).digest()
        (val_idx if int.from_bytes(digest[:8], "big") % VAL_EVERY == 0 else train_idx).append(i)
    head, rest = Subset(task, val_idx), Subset(task, train_idx)
    train.extend([rest] * repeats)
    val.append(head)
    parts.append(MixturePart(task.name + (f" ×{repeats}" if repeats > 1 else ""), len(rest) * repeats, len(head), task.data_source))


class Subset(Task):
    """A view of a task holding only the conversations at `indices`, in that order."""

    def __init__(self, task, indices: list[int]) -> None:
        super().__init__()
        self.task, self.indices = task, list(indices)
        self.name, self.data_source = task.name, task.data_source

    def num_examples(self) -> int:
        return len(self.indices)

    def get_example(self, index: int):
        return self.task[self.indices[index]]


def sft_mixture(data: str, seed: int = 42, mmlu_epochs: int = 3, gsm8k_epochs: int = 4, add: tuple[str, ...] = (), skip_bad: bool = False):
    """(train TaskMixture, val TaskMixture, [MixturePart]) for `--data web|demo|FILE|NAME` plus each `--add FILE[:EPOCHS]`."""
    from nanochat.tasks.base import TaskMixture
    from nanochat.tasks.identity import IdentityConversations

    parts: list[MixturePart] = []
    train: list = []
    val: list = []
    if data == "demo":
        from nanochat.tasks.arithmetic import DemoArith, SimpleArithmetic
        from nanochat.tasks.austen import AustenQuestions
        from nanochat.tasks.customjson import PackagedChat
        from nanochat.tasks.identity import SmallTalk

        m = DEMO_MIXTURE
        tasks = [
            PackagedChat("chatterbot"), FirstExchange(PackagedChat("chitchat"))[: m["chitchat"]], IdentityConversations(size=m["identity"]),
            SmallTalk(size=m["small talk"]), AustenQuestions(size=m["austen"]), SimpleArithmetic(size=m["arithmetic"], split="train"),
            DemoArith("train", size=m["demo arith"]),  # the demo's RL task: SFT teaches its format, RL then has answers to reward
        ]  # fmt: skip
        for task in tasks:
            if getattr(task, "split", "") == "test":  # a guard: eval sets never enter the training mixture
                raise NanochatError(f"{task.name} test split in the SFT mixture; this is a bug")
            _held_out(task, parts, train, val, repeats=m["chatterbot repeats"] if task.name == "chatterbot" else 1)
    elif data == "web":
        from nanochat.tasks.gsm8k import GSM8K
        from nanochat.tasks.mmlu import MMLU
        from nanochat.tasks.smoltalk import SmolTalk

        try:
            st, mmlu, gsm = SmolTalk("train"), MMLU("all", "auxiliary_train"), GSM8K("main", "train")
        except NanochatError as e:
            raise NanochatError(f"the web SFT mixture (SmolTalk, MMLU, GSM8K) needs the Hugging Face Hub: {str(e).split(';')[0]}; "
                                "offline, fine-tune on the packaged conversations with --data demo") from e  # fmt: skip
        ident = IdentityConversations(size=1000)
        train += [st] + [mmlu] * mmlu_epochs + [gsm] * gsm8k_epochs + [ident]
        parts += [MixturePart("SmolTalk train", len(st), 0, st.data_source),
                  MixturePart(f"MMLU auxiliary_train ×{mmlu_epochs}", len(mmlu) * mmlu_epochs, 0, mmlu.data_source),
                  MixturePart(f"GSM8K train ×{gsm8k_epochs}", len(gsm) * gsm8k_epochs, 0, gsm.data_source),
                  MixturePart("identity", len(ident), 0, ident.data_source)]  # fmt: skip
        st_val, mmlu_val, gsm_val = SmolTalk("test"), MMLU("all", "test")[:5200], GSM8K("main", "test")[:420]
        val += [st_val, mmlu_val, gsm_val]
        parts += [MixturePart("SmolTalk test (val)", 0, len(st_val), st_val.data_source),
                  MixturePart("MMLU test[:5200] (val)", 0, len(mmlu_val), mmlu_val.data_source),
                  MixturePart("GSM8K test[:420] (val)", 0, len(gsm_val), gsm_val.data_source)]  # fmt: skip
    else:
        _user_sets([data], "--data", parts, train, val, skip_bad)
    _user_sets(add, "--add", parts, train, val, skip_bad)
    return TaskMixture(train, seed=seed), TaskMixture(val, seed=seed), parts


def _user_sets(specs, option: str, parts: list, train: list, val: list, skip_bad: bool) -> None:
    """Your own conversation sets (files or imported names, `:EPOCHS` repeats), held out by content like the demo sets."""
    from nanochat.data.chat_jsonl import resolve_chat_source
    from nanochat.tasks.customjson import CustomJSON

    for spec in specs:
        src = resolve_chat_source(spec, option)
        task = CustomJSON(src.path, skip_bad=skip_bad, name=src.name)
        _held_out(task, parts, train, val, repeats=src.epochs)
        if task.skipped:
            parts[-1].name += f" ({len(task.skipped)} bad lines skipped)"


class FirstExchange(Task):
    """A view of a chat task with each conversation cut to its first user and assistant messages."""

    def __init__(self, task) -> None:
        super().__init__()
        self.task = task
        self.name = f"{task.name} (first exchange)"
        self.data_source = task.data_source

    def num_examples(self) -> int:
        return len(self.task)

    def get_example(self, index: int):
        messages = self.task[index]["messages"]
        first = 1 if messages[0]["role"] == "system" else 0
        return {"messages": messages[: first + 2]}


class SFTPacker:
    """Batches of best-fit packed, BOS-padded conversations; an iterator of (inputs, targets)."""

    def __init__(self, dataset, tokenizer, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 device: str = "cpu", buffer_size: int = 100, state: dict | None = None) -> None:  # fmt: skip
        if len(dataset) == 0:
            raise NanochatError("the SFT mixture is empty; check --data")
        self.dataset, self.tokenizer = dataset, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.world_size, self.device, self.buffer_size = world_size, device, buffer_size
        self.cursor, self.epoch = rank, 0
        self.buffer: list[tuple[list[int], list[int]]] = []
        self.rows_padding = 0  # padding tokens in the last batch (for the efficiency line)
        if state is not None:
            self.cursor, self.epoch = int(state["cursor"]), int(state["epoch"])
            self.buffer = [(list(i), list(m)) for i, m in state["buffer"]]

    @property
    def progress(self) -> float:
        """Epochs consumed so far (fractional), by this rank's cursor."""
        return self.epoch + min(self.cursor, len(self.dataset)) / len(self.dataset)

    def _fetch(self) -> None:
        """Read the next conversation of this rank into the buffer; one whose assistant part falls
        entirely beyond the row (a long prompt cut to `seq_len + 1` tokens) has nothing to train and is
        passed over: a micro-batch of only such rows would have no target at all, and a NaN loss."""
        for _ in range(len(self.dataset) + 1):
            if self.cursor >= len(self.dataset):
                self.cursor -= len(self.dataset)
                self.epoch += 1
            ids, mask = self.tokenizer.render_conversation(self.dataset[self.cursor], max_tokens=self.seq_len + 1)
            self.cursor += self.world_size
            if any(mask):
                self.buffer.append((ids, mask))
                return
        raise NanochatError(f"no conversation has an assistant token within {self.seq_len + 1} tokens; use a longer --max-seq-len")

    def next_row(self) -> tuple[list[int], list[int]]:
        """One row of seq_len + 1 tokens and its mask (padding has mask 0)."""
        cap = self.seq_len + 1
        ids: list[int] = []
        mask: list[int] = []
        while len(ids) < cap:
            while len(self.buffer) < self.buffer_size:
                self._fetch()
            room = cap - len(ids)
            best = -1
            for j, (conv, _) in enumerate(self.buffer):
                if len(conv) <= room and (best < 0 or len(conv) > len(self.buffer[best][0])):
                    best = j
            if best < 0:
                ids += [self.tokenizer.bos_id] * room
                mask += [0] * room
                break
            conv, m = self.buffer.pop(best)
            ids += conv
            mask += m
        return ids, mask

    def __iter__(self) -> "SFTPacker":
        return self

    def __next__(self):
        import torch

        rows = [self.next_row() for _ in range(self.batch_size)]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool)
        inputs = ids[:, :-1]
        targets = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -1))
        return inputs.to(self.device), targets.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "epoch": self.epoch, "buffer": [[i, m] for i, m in self.buffer]}
