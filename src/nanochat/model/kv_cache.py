"""KVCache: the keys and values of past tokens, for prefill and decode, with a length per row.

Layout (FlashAttention-3's native one, so FA3 can read and write it in place):

    k, v      (n_layer, batch, max_len, n_kv_head, head_dim), in the model's compute dtype
    lengths   (batch,) int32 on the cache's device: tokens filled in each row
    tokens    (batch, max_len) int64: the token id in each slot (the model's smear gate reads a row's previous token)

Keys are stored after RoPE and QK-norm, so a cached key already carries its position.

A forward pass with `kv_cache=cache` and `idx` of shape (batch, T_new) puts token t of row b at position
`lengths[b] + t` (that is its RoPE position too), writes its key and value into slot `lengths[b] + t` of every
layer, attends to slots 0 .. lengths[b] + t (and only the last `window` of them on a sliding-window layer), and
finally advances every row by T_new.

Rows of different lengths: prefill a right-padded batch of prompts in one forward, then call
`set_lengths(true_lengths)`. Slots past a row's length hold stale padding, but a query never looks past its own
position and later tokens overwrite those slots, so the padding is never read.

`max_filled` is a host-side upper bound of `lengths`, kept so that a decode step needs no device sync to check
capacity or to slice the filled part of the cache. With `read_all=True` attention reads all `max_len` slots
(masked) instead of the filled part, so every decode step has the same shapes: what a captured CUDA graph needs.

Continuous batching (engine/batcher.py) keeps one cache whose rows are slots that requests take and give back:
`load_row(prefilled, row)` puts a one-row prefilled cache into one row, and `window(rows, length)` is a cache over
the first rows and slots sharing this one's memory, so a decode step runs only as many rows (and, with
`read_all`, reads only as many slots) as the requests in it need.
"""

from __future__ import annotations

import torch

from nanochat.common.errors import NanochatError


class KVCache:
    def __init__(
        self,
        batch_size: int,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        read_all: bool = False,
    ) -> None:
        if batch_size < 1 or max_len < 1:
            raise NanochatError(f"KV cache needs batch >= 1 and max_len >= 1 (got {batch_size}, {max_len})")
        shape = (n_layer, batch_size, max_len, n_kv_head, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, device=device, dtype=torch.int32)
        self.tokens = torch.zeros((batch_size, max_len), device=device, dtype=torch.long)
        self.max_filled = 0
        self.read_all = read_all

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, device=None, dtype=None, read_all: bool = False) -> "KVCache":
        """A cache shaped for `model` (max_len defaults to the model's sequence_len)."""
        c = model.config
        device = device if device is not None else model.lm_head.weight.device
        return cls(batch_size, c.n_layer, c.n_kv_head, c.head_dim, max_len or c.sequence_len, device, dtype or model.compute_dtype, read_all)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def n_layer(self) -> int:
        return self.k.shape[0]

    def reset(self) -> None:
        self.lengths.zero_()
        self.max_filled = 0

    def set_lengths(self, lengths) -> None:
        """Set each row's filled length (e.g. the true prompt lengths after a right-padded prefill)."""
        lengths = torch.as_tensor(lengths, dtype=torch.int32).reshape(-1)
        if lengths.numel() != self.batch_size:
            raise NanochatError(f"set_lengths got {lengths.numel()} lengths for a cache of {self.batch_size} rows")
        top = int(lengths.max())
        if int(lengths.min()) < 0 or top > self.max_len:
            raise NanochatError(f"cache lengths must lie in 0..{self.max_len}; got {lengths.tolist()}")
        self.lengths.copy_(lengths.to(self.lengths.device))
        self.max_filled = top

    def positions(self, t_new: int) -> torch.Tensor:
        """Positions (batch, t_new) of the next t_new tokens of every row."""
        if self.max_filled + t_new > self.max_len:
            raise NanochatError(
                f"KV cache is full: {self.max_filled} + {t_new} tokens > its {self.max_len} slots; allocate a longer cache or generate fewer tokens"
            )
        return self.lengths.long().unsqueeze(1) + torch.arange(t_new, device=self.lengths.device).unsqueeze(0)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store k, v (batch, t_new, n_kv_head, head_dim) of layer `layer` at `positions` (batch, t_new)."""
        rows = torch.arange(self.batch_size, device=positions.device).unsqueeze(1)
        self.k[layer][rows, positions] = k.to(self.k.dtype)
        self.v[layer][rows, positions] = v.to(self.v.dtype)

    def write_tokens(self, idx: torch.Tensor, positions: torch.Tensor) -> None:
        """Store the token ids idx (batch, t_new) at `positions` (batch, t_new)."""
        self.tokens.scatter_(1, positions, idx)

    def filled(self, layer: int, t_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer `layer` up to the longest row after t_new more tokens (a view)."""
        n = self.max_len if self.read_all else self.max_filled + t_new
        return self.k[layer, :, :n], self.v[layer, :, :n]

    def advance(self, t_new: int) -> None:
        self.lengths += t_new
        self.max_filled += t_new

    def copy_from(self, other: "KVCache") -> None:
        """Copy another cache's contents; a one-row `other` is replicated into every row (prefill once, sample many)."""
        if other.batch_size not in (1, self.batch_size):
            raise NanochatError(f"cannot copy a {other.batch_size}-row cache into a {self.batch_size}-row one")
        n = self._source_length(other)
        self.k[:, :, :n] = other.k[:, :, :n]
        self.v[:, :, :n] = other.v[:, :, :n]
        self.tokens[:, :n] = other.tokens[:, :n]
        self.lengths.copy_(other.lengths.expand(self.batch_size))
        self.max_filled = n

    def _source_length(self, other: "KVCache") -> int:
        """The tokens `other` holds, once it is known to be a cache of the same model that fits here."""
        if other.k.shape[0] != self.k.shape[0] or other.k.shape[3:] != self.k.shape[3:]:
            raise NanochatError("cannot copy between KV caches of different models")
        if other.max_filled > self.max_len:
            raise NanochatError(f"the source cache holds {other.max_filled} tokens but this one has only {self.max_len} slots")
        return other.max_filled

    def load_row(self, other: "KVCache", row: int, src_row: int = 0, length: int | None = None) -> None:
        """Copy row `src_row` of `other` (its first `length` tokens, default all it holds) into row `row`, whose
        length becomes that; the other rows are untouched."""
        if not 0 <= src_row < other.batch_size:
            raise NanochatError(f"load_row: row {src_row} of a {other.batch_size}-row cache does not exist")
        n = self._source_length(other) if length is None else length
        if n > min(other.max_len, self.max_len):
            raise NanochatError(f"load_row: {n} tokens do not fit a {self.max_len}-slot cache")
        self.k[:, row, :n] = other.k[:, src_row, :n]
        self.v[:, row, :n] = other.v[:, src_row, :n]
        self.tokens[row, :n] = other.tokens[src_row, :n]
        self.lengths[row] = n
        self.max_filled = max(self.max_filled, n)

    def window(self, rows: int, length: int | None = None) -> "KVCache":
        """A cache over rows 0..rows-1 and slots 0..length-1 (default all) that shares this one's tensors:
        writes and length updates land here too. Its `max_filled` starts at this one's bound, cut to `length`."""
        length = self.max_len if length is None else length
        if not (1 <= rows <= self.batch_size and 1 <= length <= self.max_len):
            raise NanochatError(f"a cache window wants 1 to {self.batch_size} rows and 1 to {self.max_len} slots (got {rows}, {length})")
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, :rows, :length], self.v[:, :rows, :length]
        view.lengths, view.tokens = self.lengths[:rows], self.tokens[:rows, :length]
        view.max_filled, view.read_all = min(self.max_filled, length), self.read_all
        return view
