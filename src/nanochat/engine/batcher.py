"""Continuous batching: many requests share one decode step, joining and leaving at token boundaries.

    batch = engine.decode_batch(slots=8)
    entry = batch.join(prompt_ids, num_samples=1, max_tokens=64, temperature=0.0)   # prefill into free slots
    while batch.entries:
        for entry, column in batch.step():       # one token column per request (one entry per sample)
            ...                                   # hand it on; a request that is over (or cancelled):
            if entry.ended: batch.leave(entry)   # its slots are free for the next join

`DecodeBatch` owns one KVCache of `slots` rows (the cache keeps a length per row). A request takes
`num_samples` free rows, lowest first; at the next step the prompts of every request that joined since the
last one are prefilled together (one right-padded forward, each read at its own last position, up to
PREFILL_TOKENS padded tokens a forward), and each prompt's keys are copied into its rows, so 32 requests that
arrive together wait for one prefill, not 32 in turn. `step()` first runs one forward over the rows whose requests continue (each
fed its last token), then samples every request from its own logits with its own `RowSampler` (sampling
settings, seeded generator, repetition guards, calculator state machine: engine.py), so a request's
tokens are the ones Engine.generate gives it alone, whoever else is in the batch. The forward covers rows
0 .. the highest slot in use; rows in that range that are not fed this step (free, or joined since the
last step) take a dummy token whose key lands in a slot their next real token overwrites, and their
lengths are set back from the host's copy before every forward.

Decoding follows the engine's mode (engine.py). "eager" (CPU): the model's forward over the rows in use,
reading each step's filled slots. "graph" (CUDA) and "static": the cache reads all its slots (masked), and
a step runs over a window of rows and slots rounded up to powers of two (slots from 256), each window
captured once as a CUDA graph ("static" runs the same shapes eagerly: how the CPU tests check them);
`warm_up()` captures the shortest window of every row count before the first request.
`SerialBatch` gives an engine that only has `generate` (a test double) the same interface with one slot.
`on_forward(rows, requests)`, when set, sees every decode forward: its rows and how many requests it fed
(what the tests count to see that requests really share a step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from nanochat.common.errors import NanochatError
from nanochat.engine.engine import RowSampler

PREFILL_TOKENS = 16384  # padded prompt tokens one prefill forward may take (its logits are rows × tokens × vocab)


@dataclass(eq=False)  # entries are found in lists by identity: their fields hold tensors and the caller's job
class BatchEntry:
    """One request in a batch: its rows (slots), sampler, tokens left, and the latest step's column."""

    rows: list[int]
    sampler: RowSampler | None
    max_tokens: int
    on_logits: Callable[[torch.Tensor], None] | None = None
    tag: Any = None  # the caller's (the serve worker's job)
    steps: int = 0
    logits: torch.Tensor | None = None  # the next step's logits, (rows, vocab)
    column: list[int] | None = None  # the last sampled column, fed at the next forward while the entry runs
    ended: bool = False  # every row has ended, or max_tokens were generated
    prompt: list[int] | None = None  # until the next step prefills it
    sampling: tuple = ()  # (temperature, top_k, top_p, seed, guards) for the sampler the prefill makes
    gen: Iterator | None = field(default=None, repr=False)  # SerialBatch only


class DecodeBatch:
    """A decode batch of `slots` rows of one KV cache over an Engine (see the module docstring)."""

    def __init__(self, engine, slots: int, on_forward: Callable[[int, int], None] | None = None):
        from nanochat.model.kv_cache import KVCache

        if slots < 1:
            raise NanochatError(f"a decode batch needs at least 1 slot (got {slots})")
        self.engine, self.slots = engine, slots
        self.static = engine.decode in ("graph", "static")  # static shapes (and, for "graph", CUDA graphs)
        self.cache = KVCache.for_model(engine.model, slots, max_len=engine.sequence_len, read_all=self.static)
        self.owner: list[BatchEntry | None] = [None] * slots
        self.lengths = [0] * slots  # host copy of each row's filled length (0 for a free row)
        self.entries: list[BatchEntry] = []  # in join order
        self.on_forward = on_forward  # (rows in the forward, requests fed) per decode forward
        self.on_prefill: Callable[[int], None] | None = None  # (prompts prefilled together) per prefill
        self._steps: dict[tuple[int, int], _StaticStep] = {}  # (rows, slots) -> step, least recently used first

    @property
    def free(self) -> int:
        return self.owner.count(None)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Capture the CUDA graphs of the shortest window for every row count now (graph mode only), so that
        the first requests do not wait for them."""
        if self.engine.decode != "graph":
            return
        rows = 1
        while True:
            self._static_step(min(rows, self.slots), 1)
            if rows >= self.slots:
                return
            rows *= 2

    @torch.inference_mode()
    def join(self, prompt_ids: list[int], num_samples: int = 1, max_tokens: int | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = 42, on_logits=None, tag: Any = None,
             **guards) -> BatchEntry:  # fmt: skip
        """Prefill one prompt into `num_samples` free rows; the entry samples its first tokens at the next step.
        `guards`: repetition_penalty, no_repeat_ngram, frequency_penalty, presence_penalty (as Engine.generate).
        An entry with no room to generate is ended at once and takes no rows."""
        from nanochat.engine.engine import _as_prompts

        eng = self.engine
        prompt = _as_prompts(prompt_ids)[0]
        max_tokens = eng.check_request([prompt], num_samples, max_tokens, **guards)
        if max_tokens == 0:
            return BatchEntry([], None, 0, tag=tag, ended=True)
        if num_samples > self.free:
            raise NanochatError(f"{num_samples} rows asked for but {self.free} of the batch's {self.slots} are free; wait for a request to leave")
        rows = [i for i, o in enumerate(self.owner) if o is None][:num_samples]
        entry = BatchEntry(rows, None, max_tokens, on_logits, tag, prompt=prompt)
        entry.sampling = (temperature, top_k, top_p, seed, guards)  # the sampler is made at the prefill (it needs the logits' width)
        for r in rows:  # reserved now; filled by the next step's prefill
            self.owner[r], self.lengths[r] = entry, 0
        self.entries.append(entry)
        return entry

    def _prefill(self) -> None:
        """Prefill the requests that joined since the last step, several prompts per right-padded forward (each
        prompt's logits read at its own last position; at most PREFILL_TOKENS padded tokens a forward), then copy
        each prompt's keys into its rows."""
        todo = [e for e in self.entries if e.prompt is not None and not e.ended]
        group: list[BatchEntry] = []
        for e in todo:
            if group and (len(group) + 1) * max(len(x.prompt) for x in group + [e]) > PREFILL_TOKENS:
                self._prefill_group(group)
                group = []
            group.append(e)
        if group:
            self._prefill_group(group)

    def _prefill_group(self, group: list[BatchEntry]) -> None:
        eng = self.engine
        longest = max(len(e.prompt) for e in group)
        padded = torch.full((len(group), longest), eng.ids["bos"], dtype=torch.long)
        for i, e in enumerate(group):
            padded[i, : len(e.prompt)] = torch.tensor(e.prompt, dtype=torch.long)
        pre = eng._new_cache(len(group), longest)
        alone = len(group) == 1  # then only the last position's logits are computed
        out = eng._forward(padded.to(eng.device), pre, last_only=alone)
        for i, e in enumerate(group):
            n = len(e.prompt)
            logits = out[i, -1 if alone else n - 1].unsqueeze(0)
            temperature, top_k, top_p, seed, guards = e.sampling
            e.sampler = RowSampler(eng, len(e.rows), logits.size(-1), temperature, top_k, top_p, seed, **guards)
            e.logits = logits.expand(len(e.rows), -1)
            for r in e.rows:
                self.cache.load_row(pre, r, src_row=i, length=n)
                self.lengths[r] = n
            e.prompt = None
        if self.on_prefill is not None:
            self.on_prefill(len(group))

    def leave(self, entry: BatchEntry) -> None:
        """Give the entry's rows back (finished, stopped or cancelled); idempotent."""
        for r in entry.rows:
            if self.owner[r] is entry:
                self.owner[r], self.lengths[r] = None, 0
        if entry in self.entries:
            self.entries.remove(entry)
        entry.ended, entry.column, entry.logits = True, None, None

    @torch.inference_mode()
    def step(self) -> list[tuple[BatchEntry, list[int]]]:
        """Advance every running request by one token: (entry, its token column) in join order. An entry is
        `ended` after its last column; the caller then calls `leave` (or anytime before, to cancel)."""
        self._forward()
        self._prefill()  # after the decode forward: those rows take no part in it
        live = [e for e in self.entries if not e.ended and e.logits is not None]
        for e in live:
            if e.on_logits is not None:
                e.on_logits(e.logits)
        draws = [e.sampler.draw(e.logits) for e in live]
        drawn = torch.cat(draws).tolist() if draws else []  # one device sync for the whole batch
        out, at = [], 0
        for e in live:
            column, _masks = e.sampler.emit(drawn[at : at + len(e.rows)])
            at += len(e.rows)
            e.steps += 1
            e.column, e.logits = column, None
            e.ended = e.sampler.done or e.steps >= e.max_tokens
            out.append((e, column))
        return out

    def _forward(self) -> None:
        """One decode forward for the entries that sampled a column last step and continue."""
        fed = [e for e in self.entries if e.column is not None and not e.ended]
        for e in self.entries:
            if e.ended:
                e.column = None
        if not fed:
            return
        hi = 1 + max(r for e in fed for r in e.rows)
        if self.static:  # a few fixed shapes: rows and slots in powers of two
            hi = min(self.slots, 1 << (hi - 1).bit_length())
        ids = [self.engine.ids["bos"]] * hi
        for e in fed:
            for r, t in zip(e.rows, e.column):
                ids[r] = t
        if self.on_forward is not None:
            self.on_forward(hi, len(fed))
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.engine.device)
        if self.static:
            logits = self._static_step(hi, max(self.lengths[:hi]) + 1).run(ids_t, self.lengths[:hi])
        else:
            view = self.cache.window(hi)
            view.set_lengths(self.lengths[:hi])
            logits = self.engine._forward(ids_t.unsqueeze(1), view)[:, -1, :]
        for e in fed:
            for r in e.rows:
                self.lengths[r] += 1
            e.logits = logits[e.rows]
            e.column = None

    def _static_step(self, rows: int, needed: int) -> "_StaticStep":
        """The static step over `rows` rows and at least `needed` slots (powers of two from 256, as the
        engine's own static steps: a step reads all its slots, so a short chat should not read the context)."""
        length = min(self.engine.sequence_len, max(256, 1 << (max(needed, 1) - 1).bit_length()))
        key = (rows, length)
        step = self._steps.pop(key, None)
        if step is None:
            while len(self._steps) >= 16:  # each graph holds its own activations: keep the memory bounded
                self._steps.pop(next(iter(self._steps)))
            step = _StaticStep(self.engine.model, self.cache.window(rows, length), graph=self.engine.decode == "graph")
        self._steps[key] = step
        return step


class _StaticStep:
    """One decode step over a fixed window of the batch's cache (all its slots read, masked), replayed as a
    CUDA graph when `graph`. Rows the step does not feed take a dummy token at their length: a slot their
    next real token overwrites; their lengths are set back before every run."""

    def __init__(self, model, view, graph: bool):
        self.model, self.view = model, view
        self.idx = torch.zeros(view.batch_size, 1, dtype=torch.long, device=view.k.device)
        self.graph, self.logits = None, None
        if graph:
            with torch.cuda.device(view.k.device):
                self._capture()

    def run(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Logits (rows, vocab) after feeding `ids` (rows,) at positions `lengths`."""
        self.view.set_lengths(lengths)
        self.idx.copy_(ids.view(-1, 1))
        if self.graph is None:
            return self.model(self.idx, kv_cache=self.view, last_only=True)[:, -1, :]
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        # the warm-up runs really write, at slots 0 and 1 of every row (lengths 0, then 1): those slots are
        # saved first and put back after, with the lengths; the capture itself runs nothing
        view = self.view
        saved = (view.lengths.clone(), view.k[:, :, :2].clone(), view.v[:, :, :2].clone(), view.tokens[:, :2].clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            view.lengths.zero_()
            view.max_filled = 0
            for _ in range(2):
                self.model(self.idx, kv_cache=view, last_only=True)
        torch.cuda.current_stream().wait_stream(side)
        view.lengths.copy_(saved[0])
        view.k[:, :, :2], view.v[:, :, :2], view.tokens[:, :2] = saved[1], saved[2], saved[3]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # other workers keep their GPUs busy meanwhile
            self.logits = self.model(self.idx, kv_cache=view, last_only=True)[:, -1, :]
        view.lengths.copy_(saved[0])


class SerialBatch:
    """The batch interface over an engine that only has `generate`: one request at a time (one slot)."""

    def __init__(self, engine):
        self.engine, self.slots = engine, 1
        self.entries: list[BatchEntry] = []

    @property
    def free(self) -> int:
        return 0 if self.entries else 1

    def join(self, prompt_ids: list[int], num_samples: int = 1, max_tokens: int | None = None, tag: Any = None, **kw) -> BatchEntry:
        if self.entries:
            raise NanochatError("this engine runs one request at a time; wait for the current one to leave")
        entry = BatchEntry([0], None, max_tokens or 0, tag=tag)
        entry.gen = self.engine.generate(prompt_ids, num_samples=num_samples, max_tokens=max_tokens, **kw)
        self.entries.append(entry)
        return entry

    def leave(self, entry: BatchEntry) -> None:
        if entry.gen is not None:
            entry.gen.close()
        if entry in self.entries:
            self.entries.remove(entry)
        entry.ended = True

    def step(self) -> list[tuple[BatchEntry, list[int] | None]]:
        """As DecodeBatch.step, but the end shows one step late: (entry, None) once the generator is over."""
        out: list[tuple[BatchEntry, list[int] | None]] = []
        for e in self.entries:
            column = next(e.gen, None)
            e.ended = column is None
            if column is not None:
                e.steps += 1
            out.append((e, None if column is None else column[0]))
        return out
