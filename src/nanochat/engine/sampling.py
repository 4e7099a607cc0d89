"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling, and
two guards against repetition loops that act on the logits before any of those.

Every random draw goes through a `torch.Generator` the caller owns (one per request, seeded), so the
same seed gives the same text whatever else runs on the machine at the same time.

Repetition guards (both off by default, so evals score the model as it is; `nanochat chat` and
`nanochat serve` turn them on with the defaults in `engine/repetition.py`, which also holds the
n-gram block, `NgramBlocker`, in plain Python):

* `apply_repetition_penalty` (here): the multiplicative penalty of CTRL (Keskar et al. 2019): the
  logit of every token already in the history is divided by `penalty` when positive and multiplied
  by it when negative, so a seen token always becomes less likely. 1.0 is off.
* `NgramBlocker`: forbids any token that would complete an n-gram already present in the history,
  so no run of n tokens occurs twice: a loop (of any period) is cut the moment it would repeat.
* `apply_frequency_presence` (here): OpenAI's `frequency_penalty` / `presence_penalty`, additive
  (logit − frequency × count − presence × [count > 0]); off (0) unless an API request sets them.

The caller decides what the history is. The engine uses the row's own answer only (not the prompt,
which an answer may legitimately quote) and never penalises or blocks special tokens, so the
end-of-turn token `<|assistant_end|>` always stays available.
"""

from __future__ import annotations

import torch

MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy (and 1/T would overflow float32 for T < ~1e-38)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A generator on `device` seeded with `seed` (a fresh random seed when None)."""
    g = torch.Generator(device=torch.device(device))
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, V) scaled by 1/temperature with everything outside top-k / top-p set to -inf.

    top_k None or 0 and top_p None or >= 1 mean "no filtering". The most likely token always survives,
    so the result always has at least one finite entry per row.
    """
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # max first: no overflow at small T
    vocab = logits.size(-1)
    if top_k is not None and 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # mass strictly before each token: a token is kept while the mass before it is below top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Logits (B, V) with every entry where `seen` (B, V bool) is True pushed down by `penalty` >= 1:
    divided by it when positive, multiplied by it when negative (zero stays zero)."""
    if penalty == 1.0:
        return logits
    logits = logits.float()
    pushed = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pushed, logits)


def apply_frequency_presence(logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float) -> torch.Tensor:
    """OpenAI's additive penalties: logits (B, V) minus `frequency` × counts minus `presence` where
    counts > 0; `counts` (B, V) is how often each token already occurs in the row's history."""
    if frequency == 0.0 and presence == 0.0:
        return logits
    counts = counts.to(torch.float32)
    return logits.float() - frequency * counts - presence * (counts > 0).to(torch.float32)


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, V) -> (B,) int64. temperature 0 is greedy (argmax)."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature < MIN_TEMPERATURE:  # 0, or so small that 1/T overflows float32: greedy
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
