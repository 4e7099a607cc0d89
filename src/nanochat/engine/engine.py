"""The inference engine: prefill a prompt once, then decode with a KV cache, running the calculator tool.

    engine = Engine(model, tokenizer)
    for token_column, mask_column in engine.generate(prompt_ids, num_samples=4, max_tokens=256, temperature=0.8):
        ...  # one token per sample per step; mask 0 marks tokens the engine forced (tool output)
    sequences, masks = engine.generate_batch(prompt_ids, num_samples=16, max_tokens=256, temperature=1.0)

`prompt_ids` is one prompt (a list of ids) or several (a list of lists, of any lengths). Rows are
prompt-major: prompt 0's samples first. One prompt with several samples is prefilled once (batch 1) and
its cache copied to every sample's row; several prompts are prefilled together, right-padded, and each
row then continues from its own length.

Each row runs a small state machine (`RowState`): a row ends when it samples `<|assistant_end|>` or
`<|bos|>`; between `<|python_start|>` and `<|python_end|>` it collects an expression, runs the
calculator on it, and then forces `<|output_start|>result<|output_end|>` into the sequence (mask 0,
so RL does not train on what the tool wrote). Finished rows keep receiving `<|bos|>` with mask 0 until
every row is done or `max_tokens` is reached. The total length never exceeds the model's context.

Repetition guards (`repetition_penalty` > 1, `no_repeat_ngram` >= 2, and OpenAI's additive
`frequency_penalty` / `presence_penalty` != 0; all off by default, as the evals use them): each row's
history is its own answer so far (the prompt may be quoted), the penalties count only the tokens the
row sampled itself (a calculator result the engine forced may be repeated in the answer), the n-gram
block sees every token of the answer, and none ever touches a special token, so `<|assistant_end|>`
stays available and greedy decoding still ends the turn.

Decoding: on CUDA each decode step is a replayed CUDA graph over a static-shape cache (graphs.py), which
removes the CPU's kernel-launch bottleneck at small batch; on CPU (or with decode="eager") it is the
model's plain forward with a cache sized to the request.

A request's rows sample through one `RowSampler` (its settings, seeded generator, guards and row states);
`Engine.decode_batch(slots)` makes a continuous batch (batcher.py) where many requests, each with its own
RowSampler, share the decode step: the server's path. `check_request` is the validation both share.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

import torch

from nanochat.common.errors import NanochatError
from nanochat.engine.repetition import NgramBlocker, check_openai_penalties, check_repetition_settings
from nanochat.engine.sampling import apply_frequency_presence, apply_repetition_penalty, make_generator, sample_next_token


def _default_calculator(expr: str) -> str | None:
    from nanochat.engine.tools import use_calculator

    return use_calculator(expr)


class RowState:
    """Per-row decoding state: forced tokens to emit, the python block being collected, done or not."""

    def __init__(self, ids: dict[str, int], encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], calculator):
        self.ids, self.encode, self.decode, self.calculator = ids, encode, decode, calculator
        self.forced: deque[int] = deque()
        self.python: list[int] | None = None  # tokens of the open python block, None outside one
        self.done = False

    def next_token(self, sampled: int) -> tuple[int, int]:
        """The token this row emits given what was sampled for it: (token, mask)."""
        if self.done:
            return self.ids["bos"], 0
        if self.forced:
            return self.forced.popleft(), 0
        return sampled, 1

    def observe(self, token: int) -> None:
        """Advance the state machine past `token` (sampled or forced)."""
        ids = self.ids
        if token == ids["assistant_end"] or token == ids["bos"]:
            self.done = True
        elif token == ids["python_start"]:
            self.python = []
        elif token == ids["python_end"] and self.python is not None:
            expr = self.decode(self.python)
            self.python = None
            try:
                result = self.calculator(expr)
            except Exception:  # a broken tool must not break generation; it just gives no output
                result = None
            if result is not None:
                self.forced.extend([ids["output_start"], *self.encode(str(result)), ids["output_end"]])
        elif self.python is not None:
            self.python.append(token)


class RowSampler:
    """The rows of one request: its sampling settings and random generator, its repetition guards and each
    row's tool state machine. `sample(logits)` turns one step's logits (rows, vocab) into the step's
    (token column, mask column); `done` once every row has ended. Engine.generate and the continuous
    decode batch (batcher.py) both sample through it, so a request decodes the same in either."""

    def __init__(self, engine: "Engine", rows: int, vocab: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
                 repetition_penalty: float = 1.0, no_repeat_ngram: int = 0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> None:  # fmt: skip
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = make_generator(seed, engine.device) if temperature > 0 else None
        tok = engine.tokenizer
        self.states = [RowState(engine.ids, tok.encode, tok.decode, engine.calculator) for _ in range(rows)]
        self.guard = _RepetitionGuard(rows, vocab, engine.device, engine._special_ids(), repetition_penalty, no_repeat_ngram, frequency_penalty, presence_penalty)

    @property
    def done(self) -> bool:
        return all(st.done for st in self.states)

    def sample(self, logits: torch.Tensor) -> tuple[list[int], list[int]]:
        """The tokens (and masks: 0 where the engine forced a token) the rows emit after `logits`."""
        return self.emit(self.draw(logits).tolist())

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampled token of every row (rows,), on the logits' device: no host sync, so a batch of
        requests reads all their draws back at once."""
        return sample_next_token(self.guard.apply(logits), self.generator, self.temperature, self.top_k, self.top_p)

    def emit(self, sampled: list[int]) -> tuple[list[int], list[int]]:
        """The tokens and masks the rows emit given what was drawn for them (a forced token wins)."""
        column, masks = [], []
        for i, (st, s) in enumerate(zip(self.states, sampled)):
            was_done = st.done
            t, m = st.next_token(s)
            if not was_done:
                st.observe(t)
                self.guard.push(i, t, m)
            column.append(t)
            masks.append(m)
        return column, masks


class Engine:
    """KV-cache generation over a `nanochat.model` GPT and a `nanochat.data` Tokenizer."""

    def __init__(self, model, tokenizer, calculator: Callable[[str], str | None] | None = None, decode: str = "auto"):
        """`decode`: "eager" (plain forward with the cache), "graph" (CUDA graphs, see graphs.py),
        "static" (the graph path's static shapes, run eagerly: for tests), or "auto" (graph on CUDA)."""
        if decode not in ("auto", "eager", "graph", "static"):
            raise NanochatError(f"decode mode {decode!r} is not one of auto, eager, graph, static")
        self.model = model
        self.tokenizer = tokenizer
        self.calculator = calculator or _default_calculator
        self.sequence_len = int(model.config.sequence_len)
        self.device = next(model.parameters()).device
        s = tokenizer.special_id
        self.ids = {
            "bos": tokenizer.bos_id,
            "assistant_end": s("<|assistant_end|>"),
            "python_start": s("<|python_start|>"),
            "python_end": s("<|python_end|>"),
            "output_start": s("<|output_start|>"),
            "output_end": s("<|output_end|>"),
        }
        self.terminal = {self.ids["bos"], self.ids["assistant_end"]}
        if decode == "auto":
            decode = "graph" if self.device.type == "cuda" else "eager"
        self.decode = decode
        self._steps: dict[tuple[int, int], object] = {}  # (batch, cache length) -> StaticDecodeStep, LRU order
        self._param_ptrs: tuple[int, ...] = ()

    def _static_step(self, batch: int, needed: int):
        """The reusable static decode step for `batch` rows and at least `needed` cache slots.

        Cache lengths come in power-of-two buckets from 256 up to the context, because a static step
        reads its whole cache every token: a short chat should not pay for a 2048-slot read."""
        from nanochat.engine.graphs import StaticDecodeStep

        # a captured graph reads the parameters at the addresses they had at capture: if the model's
        # tensors were replaced since (e.g. `model.to(...)`, a checkpoint loaded by assignment), recapture
        ptrs = tuple(p.data_ptr() for p in self.model.parameters())
        if ptrs != self._param_ptrs:
            self._steps.clear()
            self._param_ptrs = ptrs
        length = min(self.sequence_len, max(256, 1 << (max(needed, 1) - 1).bit_length()))
        key = (batch, length)
        step = self._steps.pop(key, None)
        if step is None:
            while len(self._steps) >= 4:  # each holds its own cache: keep the memory bounded (oldest out)
                self._steps.pop(next(iter(self._steps)))
            step = StaticDecodeStep(self.model, batch, length, graph=self.decode == "graph")
        self._steps[key] = step  # (re)inserted last: most recently used
        return step

    def _special_ids(self) -> list[int]:
        specials = getattr(self.tokenizer, "special_tokens", None)
        return sorted(specials.values()) if specials else sorted(set(self.ids.values()))

    def _new_cache(self, batch: int, max_len: int):
        from nanochat.model.kv_cache import KVCache

        return KVCache.for_model(self.model, batch, max_len=max_len)

    def _forward(self, idx: torch.Tensor, cache, last_only: bool = True) -> torch.Tensor:
        """Logits (B, 1, V) of the last position (or (B, T, V) with last_only=False), appending to `cache`."""
        return self.model(idx, kv_cache=cache, last_only=last_only)

    def _prefill(self, prompts: list[list[int]], num_samples: int, longest: int, max_tokens: int):
        """Run the prompts through the model into a decode cache: (the last position's logits per row, a
        function from one token per row to the next logits)."""
        rows = len(prompts) * num_samples
        dev = self.device
        static = self._static_step(rows, longest + max_tokens) if self.decode != "eager" else None
        cache_src = None  # a prefilled cache to copy into the decode cache, when they differ
        if len(prompts) == 1:
            prompt = torch.tensor([prompts[0]], dtype=torch.long, device=dev)
            if num_samples == 1 and static is None:
                cache = self._new_cache(1, longest + max_tokens)
                logits = self._forward(prompt, cache)[:, -1, :]
            else:  # prefill once (batch 1), then copy the cache to every sample's row
                pre = self._new_cache(1, longest)
                logits = self._forward(prompt, pre)[:, -1, :].expand(rows, -1)
                if static is None:
                    cache = self._new_cache(rows, longest + max_tokens)
                cache_src = pre
        else:  # different prompts: one right-padded prefill, then each row continues from its own length
            row_prompts = [p for p in prompts for _ in range(num_samples)]
            lengths = torch.tensor([len(p) for p in row_prompts], dtype=torch.long)
            padded = torch.full((rows, longest), self.ids["bos"], dtype=torch.long)
            for i, p in enumerate(row_prompts):
                padded[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            cache = self._new_cache(rows, longest + (0 if static is not None else max_tokens))
            out = self._forward(padded.to(dev), cache, last_only=False)  # each row's last position differs
            logits = out[torch.arange(rows, device=dev), (lengths - 1).to(dev)]
            cache.set_lengths(lengths)
        if static is not None:  # static shapes: the prefill goes into the reusable (graph) cache
            static.load(cache_src if cache_src is not None else cache)
            step_fn = static.step
        else:
            if cache_src is not None and cache is not cache_src:
                cache.copy_from(cache_src)
            step_fn = lambda ids: self._forward(ids.unsqueeze(1), cache)[:, -1, :]  # noqa: E731
        return logits, step_fn

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids,
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = 42,
        on_logits: Callable[[torch.Tensor], None] | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram: int = 0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, mask_column) per step, one entry per row (see the module docstring).

        `on_logits`, when given, sees each step's raw logits (rows, vocab) before sampling and before the
        repetition guards: the server reads the model's own token log-probabilities from it."""
        prompts = _as_prompts(prompt_ids)
        guards = dict(repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        max_tokens = self.check_request(prompts, num_samples, max_tokens, **guards)
        if max_tokens == 0:
            return
        dev = self.device
        logits, step_fn = self._prefill(prompts, num_samples, max(len(p) for p in prompts), max_tokens)
        sampler = RowSampler(self, len(prompts) * num_samples, logits.size(-1), temperature, top_k, top_p, seed, **guards)
        for _step in range(max_tokens):
            if on_logits is not None:
                on_logits(logits)
            column, masks = sampler.sample(logits)
            yield column, masks
            if sampler.done:
                return
            logits = step_fn(torch.tensor(column, dtype=torch.long, device=dev))

    def check_request(self, prompts: list[list[int]], num_samples: int, max_tokens: int | None, repetition_penalty: float = 1.0,
                      no_repeat_ngram: int = 0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> int:  # fmt: skip
        """The number of tokens a request may generate (its max_tokens cut to the room the context leaves);
        NanochatError with the fix when its settings are out of range or a prompt fills the context."""
        if num_samples < 1:
            raise NanochatError(f"num_samples must be at least 1 (got {num_samples})")
        try:
            check_repetition_settings(repetition_penalty, no_repeat_ngram)
            check_openai_penalties(frequency_penalty, presence_penalty)
        except ValueError as e:
            raise NanochatError(str(e)) from None
        longest = max(len(p) for p in prompts)
        if longest >= self.sequence_len:
            raise NanochatError(f"a prompt of {longest} tokens leaves no room in the {self.sequence_len}-token context; shorten it")
        room = self.sequence_len - longest
        return room if max_tokens is None else max(0, min(int(max_tokens), room))

    def decode_batch(self, slots: int):
        """A continuous decode batch of `slots` rows over this engine (engine/batcher.py)."""
        from nanochat.engine.batcher import DecodeBatch

        return DecodeBatch(self, slots)

    def generate_batch(
        self,
        prompt_ids,
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = 42,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram: int = 0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Completions (without the prompt and without the terminal token) and their masks, one per row."""
        prompts = _as_prompts(prompt_ids)
        rows = len(prompts) * num_samples
        seqs: list[list[int]] = [[] for _ in range(rows)]
        masks: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        gen = self.generate(prompts if len(prompts) > 1 else prompts[0], num_samples, max_tokens, temperature, top_k, top_p, seed,
                            repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram,
                            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)  # fmt: skip
        for column, mcol in gen:
            for i, (t, m) in enumerate(zip(column, mcol)):
                if done[i]:
                    continue
                if t in self.terminal:
                    done[i] = True
                    continue
                seqs[i].append(t)
                masks[i].append(m)
        return seqs, masks


class _RepetitionGuard:
    """The repetition guards of every row (see the module docstring); a no-op when all are off."""

    def __init__(self, rows: int, vocab: int, device, special_ids: list[int], penalty: float, ngram: int,
                 frequency: float = 0.0, presence: float = 0.0) -> None:  # fmt: skip
        self.penalty, self.ngram, self.frequency, self.presence = penalty, ngram, frequency, presence
        self.special = set(special_ids)
        counting = penalty != 1.0 or frequency != 0.0 or presence != 0.0
        # how often each row sampled each token (the multiplicative penalty only asks whether it did)
        self.counts = torch.zeros(rows, vocab, dtype=torch.int32, device=device) if counting else None
        self.blockers = [NgramBlocker(ngram) for _ in range(rows)] if ngram else None
        self.vocab, self.device = vocab, device

    def push(self, row: int, token: int, mask: int) -> None:
        """`token` joined row `row`'s answer; `mask` 0 means the engine forced it (tool output)."""
        if self.counts is not None and mask and token not in self.special:
            self.counts[row, token] += 1
        if self.blockers is not None:
            self.blockers[row].push(token)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.counts is not None:
            logits = apply_repetition_penalty(logits, self.counts > 0, self.penalty)
            logits = apply_frequency_presence(logits, self.counts, self.frequency, self.presence)
        if self.blockers is not None:
            rows, cols = [], []
            for i, b in enumerate(self.blockers):
                for t in b.banned() - self.special:
                    rows.append(i)
                    cols.append(t)
            if rows:
                ban = torch.zeros(logits.shape, dtype=torch.bool, device=self.device)
                ban[rows, cols] = True
                logits = logits.float().masked_fill(ban, float("-inf"))
        return logits


def _as_prompts(prompt_ids) -> list[list[int]]:
    """One prompt (list of ints) or several (list of lists) -> list of non-empty lists of ints."""
    if not prompt_ids:
        raise NanochatError("the prompt is empty; it needs at least the <|bos|> token")
    if isinstance(prompt_ids[0], (list, tuple)):
        prompts = [list(map(int, p)) for p in prompt_ids]
    else:
        prompts = [list(map(int, prompt_ids))]
    if any(len(p) == 0 for p in prompts):
        raise NanochatError("one of the prompts is empty; each needs at least the <|bos|> token")
    return prompts
