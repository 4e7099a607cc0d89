"""Rigged stand-ins for a language model, shared by the eval tests.

`Oracle` knows a set of token sequences: wherever the prefix it is given is a prefix of one of them,
it puts a large logit on the token that continues it (uniform logits elsewhere). So it "knows" the
right answers without being a trained model, and a test decides what it knows.
"""

from __future__ import annotations

import torch


class Oracle(torch.nn.Module):
    def __init__(self, sequences, vocab_size: int, boost: float = 30.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.boost = boost
        self.next: dict[tuple, set] = {}
        for seq in sequences:
            for t in range(1, len(seq)):
                self.next.setdefault(tuple(seq[:t]), set()).add(seq[t])

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab_size)
        rows = idx.tolist()
        for b in range(B):
            for t in range(T):
                for tok in self.next.get(tuple(rows[b][: t + 1]), ()):
                    logits[b, t, tok] = self.boost
        return logits
