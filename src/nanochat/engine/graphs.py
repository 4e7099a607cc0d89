"""Decode steps with static shapes, replayed as CUDA graphs: the CPU stops being the limit at batch 1.

An eager decode step of a d20 model launches ~400 small kernels and the CPU launching them is the
bottleneck (measured on the H100: 108 tokens/s at batch 1). Capturing one whole step in a CUDA graph and
replaying it removes that. A graph needs every shape and address fixed, so:

- the KV cache is made with `read_all=True`: attention reads all its slots (the mask hides those past
  each row's length), so one step has the same shapes at every position; positions and the per-row
  lengths live on the device and advance inside the graph.
- `StaticDecodeStep(model, batch, max_len, graph=True)` owns such a cache, an input buffer and (on CUDA)
  the captured graph; `load(cache)` copies a prefilled cache in, `step(ids) -> logits` runs one step.
  With graph=False the same static path runs eagerly (that is how the CPU tests check it).

A static step reads its whole cache every token, so the engine keeps StaticDecodeSteps per batch size
and power-of-two cache length (256 .. the context), a few at a time: a graph is captured once and
replayed for every later request of that shape.
"""

from __future__ import annotations

import torch

from nanochat.model.kv_cache import KVCache


class StaticDecodeStep:
    """One decode step (batch rows x 1 token) over a static cache, captured as a CUDA graph when asked."""

    def __init__(self, model, batch: int, max_len: int, graph: bool = True):
        self.model = model
        self.cache = KVCache.for_model(model, batch, max_len=max_len, read_all=True)
        device = self.cache.k.device
        self.idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.graph = None
        self.logits: torch.Tensor | None = None
        if graph:
            self._capture()

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def _capture(self) -> None:
        with torch.cuda.device(self.cache.k.device):
            self._capture_on_device()

    def _capture_on_device(self) -> None:
        # warm up on a side stream (allocator, kernels' lazy init), then capture one step
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.cache.reset()
                self.model(self.idx, kv_cache=self.cache, last_only=True)
        torch.cuda.current_stream().wait_stream(side)
        self.cache.reset()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other serve workers keep using their own GPUs while this thread captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = self.model(self.idx, kv_cache=self.cache, last_only=True)[:, -1, :]
        self.cache.reset()  # capture ran the host-side bookkeeping once; the device state was not touched

    def load(self, prefilled: KVCache) -> None:
        """Start from a prefilled cache (one row is copied to every row)."""
        self.cache.copy_from(prefilled)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) after feeding `ids` (batch,) at each row's next position."""
        if self.cache.max_filled + 1 > self.cache.max_len:
            raise RuntimeError("static KV cache is full")
        self.idx.copy_(ids.view(-1, 1))
        if self.graph is None:
            return self.model(self.idx, kv_cache=self.cache, last_only=True)[:, -1, :]
        self.graph.replay()
        self.cache.max_filled += 1  # the graph advanced the device lengths; keep the host bound in step
        return self.logits
