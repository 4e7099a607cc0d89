"""What one choice of a generation gives back as its tokens arrive: text that never splits a character or a
stop sequence, and (when asked) each token's log-probability with its most likely alternatives.

    choice = ChoiceOutput(tokenizer, stop=["\\n"], top_logprobs=5)
    text, entries, done = choice.push(token_id, logprobs_row)   # the text and tokens that are final now
    text, entries = choice.finish()                             # what was held back, at the end

Stop sequences: text is held back while its end could be the start of a stop sequence. When a stop
sequence appears, the text before it is the answer's last text and `done` is True (finish_reason "stop");
the tokens whose text starts at or after the stop sequence are dropped with it.

A log-probability entry is {"token": str, "logprob": float, "bytes": [int], "top": [(str, float, [int])],
"offset": int}, from the model's raw distribution (log-softmax of its logits, before temperature or
top-k/top-p); `offset` is where the token's text starts in the choice's text. `token_entries` makes such
entries for prompt tokens (echo). The server puts them in OpenAI's shapes (serve/outputs.py).
"""

from __future__ import annotations

import codecs

from nanochat.engine.streaming import StreamDecoder


class TokenNames:
    """The text and bytes a client sees for one token id (special tokens by name)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        token_id = int(token_id)
        hit = self._cache.get(token_id)
        if hit is None:
            if self.tok.is_special(token_id):
                text = self.tok.decode([token_id])
                raw = text.encode("utf-8")
            else:
                raw = self.tok.id_to_bytes(token_id)
                text = raw.decode("utf-8", errors="replace")  # a piece of a character shows as U+FFFD
            hit = self._cache[token_id] = (text, list(raw))
        return hit


def make_entry(names: TokenNames, token_id: int, logprobs_row, k: int) -> dict:
    """The log-probability entry of `token_id` from one position's log-softmax row (a 1-D tensor)."""
    text, raw = names(token_id)
    top = []
    if k > 0:
        values, ids = logprobs_row.topk(min(k, logprobs_row.numel()))
        for v, i in zip(values.tolist(), ids.tolist()):
            alt_text, alt_raw = names(i)
            top.append((alt_text, float(v), alt_raw))
    return {"token": text, "logprob": float(logprobs_row[int(token_id)]), "bytes": raw, "top": top}


def token_entries(model, ids: list[int], names: TokenNames, k: int) -> list[dict]:
    """Entries for every token of `ids` given the ones before it (one forward pass); the first token has
    nothing before it: its logprob and top are None."""
    import torch

    text, raw = names(ids[0])
    out: list[dict] = [{"token": text, "logprob": None, "bytes": raw, "top": None}]
    if len(ids) >= 2:
        with torch.inference_mode():
            device = next(model.parameters()).device
            logits = model(torch.tensor([ids], dtype=torch.long, device=device))[0].float()
            rows = torch.log_softmax(logits, dim=-1).cpu()
        out += [make_entry(names, ids[i], rows[i - 1], k) for i in range(1, len(ids))]
    # offsets in the prompt's text: whole characters before each token
    decoder, chars = codecs.getincrementaldecoder("utf-8")(errors="replace"), 0
    offsets = []
    for t in ids:
        raw = bytes(names(t)[1])
        piece = decoder.decode(raw)
        offsets.append(chars + _own_text_start(piece, raw))
        chars += len(piece)
    for e, off in zip(out, offsets):
        e["offset"] = off
    return out


def _own_text_start(piece: str, raw: bytes) -> int:
    """Where in `piece` (the text one token completed) the token's own text starts: a token whose bytes are
    whole characters owns the end of the piece (anything before it is an earlier token's broken character);
    a token that completes a character owns it from the start."""
    try:
        own = raw.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return len(piece) - len(own) if own and piece.endswith(own) else 0


class ChoiceOutput:
    """Text and log-probabilities of one choice, with stop sequences applied (see the module docstring)."""

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = (), top_logprobs: int | None = None, names: TokenNames | None = None):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.top_logprobs = top_logprobs  # None: no log-probabilities at all
        self.names = names or TokenNames(tokenizer)
        self.held = ""  # text that may still turn out to start a stop sequence
        self.held_entries: list[tuple[int, dict]] = []  # (offset of the token's text in `held`, entry)
        self.emitted = 0  # characters released so far
        self.stopped = False

    def push(self, token_id: int, logprobs_row=None) -> tuple[str, list[dict], bool]:
        """Add one generated token; returns (final text, final entries, stopped)."""
        if self.stopped:
            return "", [], True
        piece = self.decoder.push(token_id)
        if self.top_logprobs is not None and logprobs_row is not None:
            entry = make_entry(self.names, token_id, logprobs_row, self.top_logprobs)
            at = len(self.held) + _own_text_start(piece, bytes(entry["bytes"]))
            entry["offset"] = self.emitted + at  # where the token's text starts in the choice's text
            self.held_entries.append((at, entry))
        self.held += piece
        return self._release(final=False)

    def finish(self) -> tuple[str, list[dict]]:
        """Everything still held (the answer ended without a stop sequence, or at a stop token)."""
        if self.stopped:
            return "", []
        self.held += self.decoder.flush()
        text, entries, _ = self._release(final=True)
        return text, entries

    def _release(self, final: bool) -> tuple[str, list[dict], bool]:
        cut = None
        for s in self.stop:
            i = self.held.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self.stopped = True
            text = self.held[:cut]
            entries = [e for off, e in self.held_entries if off < cut]  # the tokens that wrote the kept text
            self.held, self.held_entries = "", []
            self.emitted += len(text)
            return text, entries, True
        keep = 0 if final else self._partial_stop_suffix()
        safe = len(self.held) - keep
        text = self.held[:safe]
        # a token is final once all of its text is (an empty piece, half a character, waits with what follows)
        done = [(off, e) for off, e in self.held_entries if off < safe or (off == safe and final)]
        rest = [(off - safe, e) for off, e in self.held_entries if not (off < safe or (off == safe and final))]
        self.held, self.held_entries = self.held[safe:], rest
        self.emitted += len(text)
        return text, [e for _, e in done], False

    def _partial_stop_suffix(self) -> int:
        """Length of the longest end of `held` that is the beginning of a stop sequence."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.held)), best, -1):
                if self.held.endswith(s[:n]):
                    best = n
                    break
        return best
