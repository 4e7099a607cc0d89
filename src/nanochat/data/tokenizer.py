"""The byte-level BPE tokenizer: trained with rustbpe, run with tiktoken, saved without pickle.

* Training: rustbpe learns `vocab_size - 9` byte-level BPE tokens (256 single bytes + merges) with a
  GPT-4-style split pattern whose numbers are grouped by at most two digits. The 9 special tokens are
  appended after the merges, so `<|bos|>` is id `vocab_size - 9`.
* Encoding: the merges become a `tiktoken.Encoding`, which encodes batches on several threads.
  Plain text is always encoded with `encode_ordinary`: a special token's text inside a document is
  just text and never becomes a special id.
* On disk (`paths.tokenizer_dir()`), written together into a temporary folder and then renamed:
    tokenizer.json            format, split pattern, special tokens, sizes, sha256 of the ranks,
                              and how the tokenizer was trained
    mergeable_ranks.tiktoken  one `base64(token bytes) rank` line per token (tiktoken's own format)
    token_bytes.json          UTF-8 byte length of every id (0 for specials), for bits per byte
* Chat rendering (`render_conversation`, `render_for_completion`) lives in `chat_format.py` and is
  exposed as methods here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from nanochat.common import paths
from nanochat.common.atomic import fresh_temp_dir, publish_dir
from nanochat.common.errors import NanochatError

SPECIAL_TOKENS: list[str] = [
    "<|bos|>",  # starts every document and conversation; also the padding token
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's output, read by the assistant, never trained on
    "<|output_end|>",
]

# GPT-4's pattern, but numbers split into groups of at most two digits (\p{N}{1,2}, not {1,3}):
# at small vocabularies this spends fewer tokens on numbers (reference LOG: lower val bpb).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

FORMAT = "nanochat-bpe"
FORMAT_VERSION = 1
META_FILE = "tokenizer.json"
RANKS_FILE = "mergeable_ranks.tiktoken"
TOKEN_BYTES_FILE = "token_bytes.json"

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB = 1 << 20
DEFAULT_DOC_CAP = 10_000  # characters of one document used for training: long documents don't dominate


def _ranks_to_text(ranks: dict[bytes, int]) -> str:
    return "".join(f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def _text_to_ranks(text: str, where: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            tok_b64, rank_s = line.split()
            ranks[base64.b64decode(tok_b64, validate=True)] = int(rank_s)
        except ValueError as e:
            raise NanochatError(f"{where}:{lineno} is not a `base64 rank` line ({e}); retrain with `nanochat tokenize-train`") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise NanochatError(f"{where} does not number its tokens 0..{len(ranks) - 1}; retrain with `nanochat tokenize-train`")
    return ranks


class Tokenizer:
    """Byte-level BPE with the 9 chat special tokens after the learned ones."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN, info: dict[str, Any] | None = None):
        import tiktoken

        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable ranks must number the tokens 0..n-1")
        self.mergeable_ranks = dict(mergeable_ranks)
        self.pattern = pattern
        self.info: dict[str, Any] = dict(info or {})
        self.special_tokens: dict[str, int] = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name="nanochat",
            pat_str=pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
            explicit_n_vocab=n + len(SPECIAL_TOKENS),
        )
        self._id_bytes: list[bytes] = [b""] * n
        for tok, rank in self.mergeable_ranks.items():
            self._id_bytes[rank] = tok

    # ---- training, saving, loading -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        max_chars: int | float | None = None,
        doc_cap: int | None = DEFAULT_DOC_CAP,
        pattern: str = SPLIT_PATTERN,
    ) -> "Tokenizer":
        """Learn `vocab_size - 9` BPE tokens from `texts` (each cut to `doc_cap` chars, `max_chars` in all).

        If the text has fewer distinct pairs than merges asked for, the vocabulary comes out smaller
        (`info["requested_vocab_size"]` keeps the request); use `.vocab_size`, not the request."""
        import rustbpe

        if not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
            raise NanochatError(f"vocab size must be an integer from {MIN_VOCAB} (256 bytes + 9 special tokens) to {MAX_VOCAB}; got {vocab_size}")
        if isinstance(texts, str):
            raise TypeError("Tokenizer.train takes an iterable of documents, not one string")
        stats = {"docs": 0, "chars": 0}
        budget = None if max_chars is None else int(max_chars)

        def capped() -> Iterable[str]:
            for text in texts:
                if budget is not None and stats["chars"] >= budget:
                    return
                if not isinstance(text, str):
                    raise NanochatError(f"tokenizer training text must be str, got {type(text).__name__}")
                if doc_cap:
                    text = text[:doc_cap]
                if budget is not None:
                    text = text[: budget - stats["chars"]]
                if not text:
                    continue
                stats["docs"] += 1
                stats["chars"] += len(text)
                yield text

        t0 = time.perf_counter()
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(capped()), vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
        seconds = time.perf_counter() - t0
        if stats["chars"] == 0:
            raise NanochatError("no training text: the data set yielded no non-empty documents")
        ranks = {bytes(tok): int(rank) for tok, rank in bpe.get_mergeable_ranks()}
        info = {
            "requested_vocab_size": vocab_size,
            "train_docs": stats["docs"],
            "train_chars": stats["chars"],
            "doc_cap": doc_cap,
            "max_chars": budget,
            "train_seconds": round(seconds, 3),
        }
        return cls(ranks, pattern=bpe.get_pattern(), info=info)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the tokenizer folder atomically (replacing an older one); returns the folder."""
        final = Path(directory) if directory is not None else paths.tokenizer_dir()
        ranks_text = _ranks_to_text(self.mergeable_ranks)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": SPECIAL_TOKENS,
            "num_mergeable": len(self.mergeable_ranks),
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "ranks_file": RANKS_FILE,
            "ranks_sha256": hashlib.sha256(ranks_text.encode("ascii")).hexdigest(),
            "info": self.info,
        }
        tmp = fresh_temp_dir(final)
        try:
            (tmp / RANKS_FILE).write_text(ranks_text, encoding="ascii")
            (tmp / TOKEN_BYTES_FILE).write_text(json.dumps(self.token_bytes()) + "\n")
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            publish_dir(tmp, final)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "Tokenizer":
        d = Path(directory) if directory is not None else paths.tokenizer_dir()
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise NanochatError(f"no tokenizer in {d}; train one with `nanochat tokenize-train` (or `--data demo` offline)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise NanochatError(f"{meta_path} is unreadable ({e}); retrain with `nanochat tokenize-train`") from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise NanochatError(f"{meta_path} is not a {FORMAT} v{FORMAT_VERSION} tokenizer; retrain with `nanochat tokenize-train`")
        if meta.get("special_tokens") != SPECIAL_TOKENS:
            raise NanochatError(f"{meta_path} has different special tokens from this nanochat; retrain with `nanochat tokenize-train`")
        ranks_path = d / meta.get("ranks_file", RANKS_FILE)
        try:
            raw = ranks_path.read_bytes()
        except OSError as e:
            raise NanochatError(f"{ranks_path} is missing ({e}); retrain with `nanochat tokenize-train`") from None
        if hashlib.sha256(raw).hexdigest() != meta.get("ranks_sha256"):
            raise NanochatError(f"{ranks_path} does not match the checksum in {meta_path}; retrain with `nanochat tokenize-train`")
        ranks = _text_to_ranks(raw.decode("ascii"), ranks_path)
        return cls(ranks, pattern=meta["pattern"], info=meta.get("info") or {})

    def fingerprint(self) -> str:
        """Vocabulary size and a hash of the merges and split pattern: equal for the same tokenizer (compared across ranks)."""
        h = hashlib.sha256(_ranks_to_text(self.mergeable_ranks).encode("ascii"))
        h.update(self.pattern.encode())
        return f"{self.vocab_size} tokens, sha256 {h.hexdigest()[:12]}"

    # ---- sizes and ids -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.mergeable_ranks) + len(SPECIAL_TOKENS)

    @property
    def bos_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    def special_id(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token; they are {', '.join(SPECIAL_TOKENS)}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id >= len(self.mergeable_ranks)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of every id (0 for special tokens), for bits per byte."""
        return [len(b) for b in self._id_bytes] + [0] * len(SPECIAL_TOKENS)

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)

    # ---- encoding and decoding -----------------------------------------------------------------

    def _resolve(self, tok: int | str | None) -> int | None:
        if tok is None or isinstance(tok, int):
            return tok
        return self.special_id(tok)

    def encode(self, text: str, prepend: int | str | None = None, append: int | str | None = None) -> list[int]:
        """Token ids of plain text (special-token text is never parsed), with optional ids around it."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str (use encode_batch for a list), got {type(text).__name__}")
        ids = self._enc.encode_ordinary(text)
        pre, post = self._resolve(prepend), self._resolve(append)
        if pre is not None:
            ids.insert(0, pre)
        if post is not None:
            ids.append(post)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[list[int]]:
        """encode() of many texts on `num_threads` threads."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of str; use encode for one string")
        out = self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
        pre, post = self._resolve(prepend), self._resolve(append)
        if pre is not None:
            for ids in out:
                ids.insert(0, pre)
        if post is not None:
            for ids in out:
                ids.append(post)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids (special tokens as their names; invalid UTF-8 as U+FFFD)."""
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    # ---- chat ----------------------------------------------------------------------------------

    def render_conversation(self, messages, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """(ids, mask) of a conversation; mask 1 on what the assistant writes. See chat_format."""
        from nanochat.data.chat_format import render_conversation

        return render_conversation(self, messages, max_tokens=max_tokens)

    def render_for_completion(self, messages) -> list[int]:
        """Prompt ids ending with `<|assistant_start|>` (a final assistant message is dropped)."""
        from nanochat.data.chat_format import render_for_completion

        return render_for_completion(self, messages)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id})"


def get_tokenizer(directory: str | Path | None = None) -> Tokenizer:
    """The trained tokenizer in `paths.tokenizer_dir()` (or NanochatError naming tokenize-train)."""
    return Tokenizer.load(directory)


def load_token_bytes(directory: str | Path | None = None) -> list[int]:
    """The saved token-bytes table (UTF-8 bytes per id, 0 for specials) without building the encoder."""
    d = Path(directory) if directory is not None else paths.tokenizer_dir()
    p = d / TOKEN_BYTES_FILE
    if not p.is_file():
        raise NanochatError(f"no token-bytes table at {p}; train a tokenizer with `nanochat tokenize-train`")
    return json.loads(p.read_text())
