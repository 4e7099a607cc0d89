"""One reply to a prompt, as a stream of events: the chat path shared by `nanochat chat` and the server.

    reply = Reply(engine, prompt_ids, ReplyParams(max_tokens=64, temperature=0.6, top_k=50, top_p=None, seed=1))
    for event in reply.events():
        ...

Events, in order:
- `("prompt_logprobs", entries)` first, only with `prompt_logprobs` (the prompt's tokens, for echo);
- `("delta", choice, text, entries)` as a choice's text becomes final (engine/choice_output.py: never half a
  character or a possible stop sequence; `entries` is empty unless log-probabilities were asked for);
- `("finish", choice, reason)`: "stop" at `<|assistant_end|>`, `<|bos|>` or a stop sequence, "length" at
  `max_tokens`;
- `("done", usage)` last, with `prompt_tokens`, `completion_tokens` (every token the engine produced for a
  choice, the end-of-turn token included) and `total_tokens`.

The engine runs the calculator tool itself (engine.py); its call and result reach the text through the
streaming decoder's display (`<<expr = result>>`). `should_stop()` is asked before each token is handled:
when it says yes, the events end there with no finish and no done (the client has gone). `close()` ends
an interrupted reply and gives back the text still held for each unfinished choice (a terminal's Ctrl-C).

`events()` drives `engine.generate` itself. The server's continuous batch (serve/workers.py over
engine/batcher.py) drives the same reply from outside instead: `generation_kwargs()` to join the batch,
then `opening()`, `advance(column)` per step and `ending()`: the same events, one request among many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from nanochat.engine.choice_output import ChoiceOutput, TokenNames, token_entries

Event = tuple[Any, ...]


@dataclass
class ReplyParams:
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    n: int = 1
    stop: tuple[str, ...] = ()  # stop sequences: the answer ends before the first one
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k best alternatives
    prompt_logprobs: bool = False  # also the prompt's tokens (echo), as ("prompt_logprobs", entries) before any delta
    repetition_penalty: float = 1.0  # the repetition guards (engine/repetition.py); off unless set
    no_repeat_ngram: int = 0
    frequency_penalty: float = 0.0  # OpenAI's additive penalties, apart from the two above
    presence_penalty: float = 0.0


class Reply:
    """The events of one generation of `params.n` choices; `texts` and `counts` per choice as they go."""

    def __init__(self, engine, prompt_ids: list[int], params: ReplyParams, should_stop: Callable[[], bool] | None = None,
                 on_step: Callable[[int, int], None] | None = None):  # fmt: skip
        self.engine, self.prompt_ids, self.params = engine, prompt_ids, params
        self.should_stop = should_stop or (lambda: False)
        self.on_step = on_step  # (steps so far, choices still running), before each step's tokens are handled
        tok = engine.tokenizer
        self.terminal = {tok.special_id("<|assistant_end|>"), tok.bos_id}
        self.names = TokenNames(tok)
        self.outputs = [ChoiceOutput(tok, params.stop, params.logprobs, self.names) for _ in range(params.n)]
        self.texts = [""] * params.n
        self.counts = [0] * params.n
        self.finished = [False] * params.n
        self.steps = 0  # engine steps handled so far
        self._rows: list = []  # the latest step's log-softmax, when log-probabilities are asked for
        self._events: Iterator[Event] | None = None

    @property
    def usage(self) -> dict:
        done = sum(self.counts)
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": done, "total_tokens": len(self.prompt_ids) + done}

    def events(self) -> Iterator[Event]:
        """Every event of the reply (see the module docstring); call once."""
        self._events = self._generate()
        return self._events

    def close(self) -> list[Event]:
        """Stop generating; the delta events of the text each unfinished choice still holds."""
        if self._events is not None:
            self._events.close()
        return [ev for i in range(self.params.n) if not self.finished[i] for ev in self._finish(i, None)]

    def _delta(self, i: int, text: str, entries: list[dict]) -> list[Event]:
        self.texts[i] += text
        return [("delta", i, text, entries)] if text or entries else []

    def _finish(self, i: int, reason: str | None) -> list[Event]:
        """Release what choice `i` holds, and (with a reason) its finish event."""
        self.finished[i] = True
        text, entries = self.outputs[i].finish()
        return self._delta(i, text, entries) + ([("finish", i, reason)] if reason else [])

    def _step(self, column, step_rows) -> list[Event]:
        """The events of one step: one new token per choice."""
        out: list[Event] = []
        for i, t in enumerate(column):
            if self.finished[i]:
                continue
            self.counts[i] += 1
            if t in self.terminal:
                out += self._finish(i, "stop")
                continue
            text, entries, stopped = self.outputs[i].push(t, step_rows[i] if step_rows is not None else None)
            out += self._delta(i, text, entries)
            if stopped:
                self.finished[i] = True
                out.append(("finish", i, "stop"))
        return out

    def generation_kwargs(self) -> dict:
        """The engine's arguments for this reply (Engine.generate, or a decode batch's join)."""
        p = self.params
        kw = dict(num_samples=p.n, max_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed,
                  repetition_penalty=p.repetition_penalty, no_repeat_ngram=p.no_repeat_ngram,
                  frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty)  # fmt: skip
        if p.logprobs is not None:
            kw["on_logits"] = self._keep_logprobs
        return kw

    def _keep_logprobs(self, logits) -> None:
        import torch

        self._rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())

    def opening(self) -> list[Event]:
        """The events before any token: the prompt's log-probabilities, when asked for."""
        p = self.params
        if not p.prompt_logprobs:
            return []
        return [("prompt_logprobs", token_entries(self.engine.model, self.prompt_ids, self.names, p.logprobs or 0))]

    def advance(self, column: list[int]) -> list[Event]:
        """The events of one engine step's token column (one token per choice)."""
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps, self.finished.count(False))
        step_rows = self._rows.pop() if self._rows else None
        self._rows.clear()
        return self._step(column, step_rows)

    def ending(self) -> list[Event]:
        """The last events once the engine has no more tokens: "length" for every open choice, then done."""
        return [ev for i in range(self.params.n) if not self.finished[i] for ev in self._finish(i, "length")] + [("done", self.usage)]

    def _generate(self) -> Iterator[Event]:
        yield from self.opening()
        gen = self.engine.generate(self.prompt_ids, **self.generation_kwargs())
        try:
            for column, _masks in gen:
                if self.should_stop():
                    return
                yield from self.advance(column)
                if all(self.finished):
                    break
        finally:
            gen.close()
        if self.should_stop():
            return
        yield from self.ending()
