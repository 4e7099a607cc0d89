"""GPTConfig: the shape of a model, and the depth dial that derives it.

    GPTConfig.from_depth(20, vocab_size=32768, sequence_len=2048)
    # -> n_layer 20, n_embd 1280 (64 x 20, rounded up to a multiple of the 128 head dim), 10 heads

Sliding windows: `window_pattern` ("SSSL" by default) is tiled over the layers and the last layer is always
forced to "L". An "L" layer sees the whole context; an "S" layer sees `short_window()` previous tokens (plus
itself). A window here is the FlashAttention "left" size: a query at position i attends keys at
positions i-w .. i.

The short window follows the reference, S = ceil(T/4/128)*128 (512 at T=2048), for T >= 512. Below that
the rounding to 128 would make S >= T, and tiny CPU models would never exercise a real window, so for
T < 512 we use S = max(1, ceil(T/4)) (64 at T=256, 16 at T=64). S never exceeds T.

`smear` and `backout` switch the two cheap additions of model/gpt.py on (the default) or off (ablations; and
checkpoints saved before they existed, whose config lacks the keys, load with both off). `attn_gate` (off by
default until a GPU side-by-side shows it pays) adds the per-head attention output gate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from nanochat.common.errors import NanochatError

VOCAB_MULTIPLE = 64  # embedding / head rows are padded to this, for aligned matmuls


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"
    smear: bool = True  # mix the previous token's embedding into each position (a gated bigram path)
    backout: bool = False  # subtract a share of the mid-depth residual before the final norm (off: +7% bpb at d12 on an H200)
    attn_gate: bool = False  # scale each head's attention output by a learned, input-dependent gate

    def __post_init__(self) -> None:
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NanochatError(f"model config {name}={value!r} must be a positive integer; fix the config or checkpoint meta")
        if self.n_embd % self.n_head:
            raise NanochatError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; pick a width that is a multiple of the head count")
        if self.n_head % self.n_kv_head:
            raise NanochatError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}; GQA needs a whole number of query heads per kv head")
        if self.head_dim % 2:
            raise NanochatError(f"head dim {self.head_dim} is odd; rotary embeddings need an even head dim")
        pattern = self.window_pattern.upper()
        if not pattern or set(pattern) - {"S", "L"}:
            raise NanochatError(f"window pattern {self.window_pattern!r} must be letters S (short) and L (long), e.g. SSSL or L")
        self.window_pattern = pattern

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def short_window(self) -> int:
        """Left window of an "S" layer (see the module docstring)."""
        t = self.sequence_len
        if t >= 512:
            return min(t, math.ceil(t / 4 / 128) * 128)
        return max(1, math.ceil(t / 4))

    def window_sizes(self) -> list[int]:
        """Left window per layer; the full context (sequence_len) for "L" layers, the last layer always "L"."""
        short, full = self.short_window(), self.sequence_len
        sizes = [short if self.window_pattern[i % len(self.window_pattern)] == "S" else full for i in range(self.n_layer)]
        sizes[-1] = full
        return sizes

    def has_value_embedding(self, layer_idx: int) -> bool:
        """Value embeddings on alternating layers, always including the last one."""
        return layer_idx % 2 == (self.n_layer - 1) % 2

    @classmethod
    def from_depth(
        cls,
        depth: int,
        vocab_size: int,
        sequence_len: int,
        *,
        aspect_ratio: int = 64,
        head_dim: int = 128,
        n_kv_head: int | None = None,
        window_pattern: str = "SSSL",
        smear: bool = True,
        backout: bool = False,
        attn_gate: bool = False,
    ) -> "GPTConfig":
        """The depth dial: width = ceil(depth * aspect_ratio / head_dim) * head_dim, heads = width / head_dim.

        `n_kv_head` defaults to the head count (plain multi-head attention); a smaller divisor gives GQA.
        Tiny CPU models pass a smaller `head_dim` / `aspect_ratio` (e.g. depth 2, aspect 32, head dim 32).
        """
        if depth < 1:
            raise NanochatError(f"--depth {depth} must be at least 1")
        if aspect_ratio < 1 or head_dim < 2:
            raise NanochatError(f"aspect ratio {aspect_ratio} and head dim {head_dim} must be positive (head dim even)")
        n_embd = math.ceil(depth * aspect_ratio / head_dim) * head_dim
        n_head = n_embd // head_dim
        return cls(
            sequence_len=sequence_len,
            vocab_size=vocab_size,
            n_layer=depth,
            n_head=n_head,
            n_kv_head=n_head if n_kv_head is None else n_kv_head,
            n_embd=n_embd,
            window_pattern=window_pattern,
            smear=smear,
            backout=backout,
            attn_gate=attn_gate,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise NanochatError(f"model config has unknown keys {sorted(unknown)}; was it written by a newer nanochat?")
        # checkpoints written before the smear gate, backout and the attention gate existed have none of them
        return cls(**{"smear": False, "backout": False, "attn_gate": False, **d})
