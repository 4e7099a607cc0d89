"""`tokenize-train --vocab-size auto`: pick the vocabulary size from the user's own text.

BPE training is greedy: each merge is the most frequent pair given the merges before it, whatever the target
size, so the tokenizer with the first k merges of a large run is the tokenizer a k-merge run would learn
(tests/test_vocab_choice.py checks this against separate runs). One training at the largest candidate size
therefore gives every smaller candidate by truncation, and each is measured on held-out text.

The rule: the size that reads the most bytes of the user's text per training FLOP at the target depth,
bytes_per_token(V) / flops_per_token(V). A larger vocabulary packs more bytes into a token but the head
(n_embd x V) costs 6 x n_embd x V FLOPs a token; compression gains flatten while the head cost keeps rising, so
the ratio has a maximum. Sizes within 1% of the best count as tied and the smallest of them wins (smaller
embedding tables, a cheaper softmax, less memory at decode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from nanochat.data.tokenizer import MIN_VOCAB, SPECIAL_TOKENS, Tokenizer

CANDIDATES = (4096, 8192, 16384, 32768, 65536)
TIE = 0.01  # sizes within 1% of the best bytes per FLOP count as tied


@dataclass(frozen=True)
class VocabRow:
    vocab_size: int
    bytes_per_token: float
    flops_per_token: float
    embedding_share: float  # token embedding + value embeddings + head, as a share of all parameters

    @property
    def bytes_per_flop(self) -> float:
        return self.bytes_per_token / self.flops_per_token


def truncated(tok: Tokenizer, vocab_size: int) -> Tokenizer:
    """The tokenizer of the first `vocab_size - 9` ranks of `tok` (special tokens after them, as always)."""
    keep = vocab_size - len(SPECIAL_TOKENS)
    if not MIN_VOCAB <= vocab_size <= tok.vocab_size:
        raise ValueError(f"cannot cut a {tok.vocab_size}-token tokenizer to {vocab_size}")
    ranks = {b: r for b, r in tok.mergeable_ranks.items() if r < keep}
    return Tokenizer(ranks, pattern=tok.pattern, info={**tok.info, "vocab_size_choice": "auto"})


def bytes_per_token(tok: Tokenizer, texts: Iterable[str]) -> float:
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode(text))
    if n_tokens == 0:
        raise ValueError("no held-out text to measure compression on")
    return n_bytes / n_tokens


def measure(tok: Tokenizer, texts: list[str], sizes: Iterable[int], cost: Callable[[int], tuple[float, float]]) -> list[VocabRow]:
    """One row per size (at most the trained size): compression on `texts`, and `cost(V) -> (flops per token,
    embedding share)` of the model that would use it."""
    rows = []
    for v in sorted(set(sizes)):
        if v > tok.vocab_size:
            continue
        flops, share = cost(v)
        rows.append(VocabRow(v, bytes_per_token(truncated(tok, v), texts), flops, share))
    return rows


def choose(rows: list[VocabRow]) -> VocabRow:
    """The smallest size within TIE of the most bytes per FLOP."""
    if not rows:
        raise ValueError("no candidate vocabulary sizes")
    best = max(r.bytes_per_flop for r in rows)
    return min((r for r in rows if r.bytes_per_flop >= (1 - TIE) * best), key=lambda r: r.vocab_size)
