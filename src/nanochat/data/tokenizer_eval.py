"""Tokenizer comparison: bytes per token of ours against GPT-2 and GPT-4 (cl100k), built offline.

The GPT-2 and cl100k_base vocabularies ship with nanochat (`resources/tokenizers/`); their raw bytes
are checked against the sha256 hashes OpenAI publishes (the ones tiktoken pins) before use, and the
tiktoken Encodings are built here from them, with no network:
* GPT-2: `encoder.json` maps each token, written in GPT-2's printable-byte alphabet, to its id;
  `vocab.bpe` lists the merges, merge k making id 256 + k (checked while loading).
* cl100k_base: `base64 rank` lines.

Text kinds: short samples written for nanochat (`resources/samples/`: news-like prose, Python code,
mathematics, several languages) and the validation split of a corpus (Persuasion for the demo).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache

from nanochat.common.errors import NanochatError
from nanochat.data import resources

GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

# Split patterns of the two OpenAI tokenizers (facts of tiktoken's openai_public).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""

SAMPLE_KINDS = [("news", "samples/news.txt"), ("code", "samples/code.txt"), ("math", "samples/math.txt"), ("multilingual", "samples/multilingual.txt")]


def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte: printable Latin-1 bytes stand for
    themselves, the other 68 bytes take the code points 256, 257, ... in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


@lru_cache(maxsize=1)
def gpt2_encoding():
    import tiktoken

    encoder = json.loads(resources.verify_resource("tokenizers/gpt2/encoder.json", GPT2_ENCODER_SHA256))
    merges = resources.verify_resource("tokenizers/gpt2/vocab.bpe", GPT2_VOCAB_BPE_SHA256).decode("utf-8").splitlines()
    alphabet = gpt2_byte_alphabet()
    ranks: dict[bytes, int] = {}
    for token, idx in encoder.items():
        if token == "<|endoftext|>":
            continue
        ranks[bytes(alphabet[c] for c in token)] = idx
    # vocab.bpe: a version line, then "left right" merges in priority order; merge k made id 256 + k.
    for k, line in enumerate(m for m in merges[1:] if m):
        left, right = line.split(" ")
        if encoder.get(left + right) != 256 + k:
            raise NanochatError("the packaged GPT-2 encoder.json and vocab.bpe disagree; reinstall nanochat")
    return tiktoken.Encoding(name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


@lru_cache(maxsize=1)
def cl100k_encoding():
    import tiktoken

    raw = resources.verify_resource("tokenizers/cl100k_base.tiktoken", CL100K_SHA256).decode("ascii")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}
    return tiktoken.Encoding(name="cl100k-offline", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 100257})


@dataclass
class KindResult:
    kind: str
    bytes: int
    tokens: dict[str, int]  # tokenizer name -> token count

    def ratio(self, name: str) -> float:
        return self.bytes / max(self.tokens[name], 1)


def sample_texts(val_text: str | None = None, val_label: str = "validation") -> list[tuple[str, str]]:
    texts = [(kind, resources.read_text(path)) for kind, path in SAMPLE_KINDS]
    if val_text:
        texts.append((val_label, val_text))
    return texts


def compare(tokenizer, texts: list[tuple[str, str]]) -> list[KindResult]:
    """Token counts of each text under GPT-2, GPT-4 (cl100k) and `tokenizer` (ours)."""
    gpt2, gpt4 = gpt2_encoding(), cl100k_encoding()
    out = []
    for kind, text in texts:
        out.append(
            KindResult(
                kind,
                len(text.encode("utf-8")),
                {"gpt2": len(gpt2.encode_ordinary(text)), "gpt4": len(gpt4.encode_ordinary(text)), "ours": len(tokenizer.encode(text))},
            )
        )
    return out


def relative(ours: int, theirs: int) -> float:
    """How many fewer tokens ours uses than theirs, in percent (positive = ours compresses better)."""
    return 100.0 * (theirs - ours) / max(theirs, 1)
